"""The model leaves the pipeline: checkpoint -> predictions (`predict`), checkpoint ->
model.onnx (`onnx_export`); `model` finds a checkpoint and its preprocessing, `inputs` reads
what is predicted on."""
