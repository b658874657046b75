"""The compiler side: an ONNX file -> a TVM artifact for one target (installed as bimatting.deploy.compiler).

graph_rewrite     recognise the ai.bimatting ops, fold the output transform (ONNX -> ONNX)
importer          ONNX -> Relax: TVM's frontend plus converters for the binary ops
lowering          the binary ops as TE / TIR functions called from Relax
kernels/          bitserial compute definitions and their numpy-prepared operands
schedules/        one schedule module per CPU family, chosen by the target
shapes            static input shapes and constants of a build
build             compile_model: rewrite -> import -> schedule -> tvm.compile -> artifact
tuning_database   the MetaSchedule records a build may apply
"""
