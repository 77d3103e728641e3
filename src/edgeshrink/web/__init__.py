"""A device bundle beyond Python: `edgeshrink pack --target web` (a folder a page or Node loads with
onnxruntime-web: web/pack.py, web/assets/edgeshrink.mjs), `--target mobile` (the ORT format for ONNX Runtime
Mobile: web/mobile.py) and `edgeshrink serve-web` (the folder over HTTP with cross-origin isolation:
web/serve.py). Nothing here is imported by ``import edgeshrink`` or the device runtime."""
