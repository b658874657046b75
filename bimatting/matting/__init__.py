"""The matte application: frames in, mattes out.

footage   reading inputs (video, image folder, webcam) and writing outputs (videos, PNGs)
frames    listing and reading image files and frame folders
runner    a network behind one interface (PyTorch, onnxruntime, a compiled artifact) and the
          loop that carries its recurrent state from frame to frame
resume    Ctrl-C keeps the work done; --resume continues it
samples   the packaged sample clip
api       bimatting.matte(...), the Python entry point (the CLI's `matte` calls it)
"""
