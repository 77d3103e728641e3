"""Recipes: one YAML file runs the whole path (fine-tune, compress, export, quantize, bench, route) against
stated targets. One schema (schema.py) and one run loop (runner.py, cached steps keyed NN-step-KEY) for every
task; the task's kind of recipe says its steps, order, targets and report: classify.py (text and tensor
classifiers), generate.py (language models). executors.py runs the steps here or on a Ray cluster."""
