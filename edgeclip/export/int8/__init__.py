"""INT8 export, one module per quantizer around what they share.

- `common`: options, calibration inputs and held-out data per encoder, the manifest's calibration record;
- `guard`: the accuracy guard (measure against fp32 on held-out inputs, keep harmful layers in float);
- `onnxruntime`: onnxruntime QDQ (onnx target) and dynamic INT8, and the TensorRT Q/DQ flavour
  (the same quantizer with symmetric activations and float biases: `flavour="tensorrt"`);
- `openvino`: NNCF post-training quantization of the OpenVINO IR;
- `coreml`: CoreML weight-only compression (int8w, palettes).

Kept free of imports so that `int8.guard` can be imported on its own.
"""
