"""The HTTP services: the device service (device.py: predicts, routes, escalates; watch.py: drift and shadow
audit) and the cloud service (cloud.py), both built on app.py, with the Open Inference Protocol (oip.py),
micro-batching (batcher.py), Ray Serve (ray_engine.py) and the cloud clients' one retry loop
(cloud_client.py, llm_client.py). llm/: the OpenAI-compatible language-model services."""
