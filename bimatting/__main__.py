from bimatting.cli import main

main()
