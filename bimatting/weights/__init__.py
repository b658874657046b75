"""Loading and saving networks: project checkpoints (checkpoints), packed 1-bit files (packed),
state-dict surgery between layouts (network_state), RVM's official ONNX as a PyTorch network
(rvm_onnx) and the checks on an untrusted ONNX file (onnx_check)."""
