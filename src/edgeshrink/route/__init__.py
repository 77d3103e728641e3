"""Routing between the device and the cloud model: confidence signals (confidence.py), policies with a
statistical guarantee (policies.py), the router a bundle carries (router.py, router_schema.py), its
calibration and evaluation (calibrate.py, evaluate.py; open_prompts.py and prompts.py for language models),
and the drift monitor (monitor.py)."""
