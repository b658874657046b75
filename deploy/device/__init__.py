"""The device side: load and run artifacts, locally or on a board over RPC (installed as bimatting.deploy.device).

runtime    CompiledModel / RecurrentRunner: run an artifact frame by frame with its states
rpc        sessions with a board (RPC address, tracker or this machine)
emulator   an emulated aarch64 board (qemu-user) for machines without one
bench      time and verify an artifact on a device
report     the bench result as JSON and text
native/    the C++ RPC server built for boards
"""
