"""Which exporter for decoder LLMs? Greedy decode speed of the candidates' ONNX graphs, run by plain
onnxruntime (what a torch-free device runtime would do), interleaved, 1 thread.

Set-up (the candidates, made from the imported SmolLM2 directory):
    HF=$(.venv/bin/edgeshrink import smollm2)
    .venv/bin/python -c "from optimum.exporters.onnx import main_export; main_export('$HF', output='/tmp/smol-optimum', task='text-generation-with-past', library_name='transformers')"
    pip install --no-deps --target /tmp/og onnxruntime-genai==0.13.2     # 0.18's builder fails under transformers<4.58
    PYTHONPATH=/tmp/og .venv/bin/python -m onnxruntime_genai.models.builder -i $HF -o /tmp/smol-og-fp32 -p fp32 -e cpu
    PYTHONPATH=/tmp/og .venv/bin/python -m onnxruntime_genai.models.builder -i $HF -o /tmp/smol-og-int4 -p int4 -e cpu
    .venv/bin/python benchmarks/llm_exporters.py $HF
Prints the first 20 greedy tokens of each (ChatML prompt "What is the capital of France?") and, per
round, (ms to the first token, decode tokens/s over 127 steps).
"""
import time, sys, json, numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
HF = sys.argv[1]
tok = Tokenizer.from_file(f"{HF}/tokenizer.json")
prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
ids0 = tok.encode(prompt).ids
cfg = json.load(open(f"{HF}/config.json"))
L, kvh, hd = cfg["num_hidden_layers"], cfg["num_key_value_heads"], cfg["hidden_size"] // cfg["num_attention_heads"]
def run(path, new=128):
    o = ort.SessionOptions(); o.intra_op_num_threads = 1
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    outs = [x.name for x in s.get_outputs()]
    past = {f"past_key_values.{i}.{kv}": np.zeros((1, kvh, 0, hd), np.float32) for i in range(L) for kv in ("key", "value")}
    ids = list(ids0); generated = []; t_first=None
    t0 = time.perf_counter()
    cur = np.array([ids], np.int64); total = len(ids)
    for step in range(new):
        feeds = {"input_ids": cur, "attention_mask": np.ones((1, total), np.int64)}
        if "position_ids" in names:
            feeds["position_ids"] = np.arange(total - cur.shape[1], total, dtype=np.int64)[None]
        feeds.update({k: v for k, v in past.items() if k in names})
        res = dict(zip(outs, s.run(None, feeds)))
        nxt = int(res["logits"][0, -1].argmax())
        if t_first is None: t_first = time.perf_counter() - t0; t1 = time.perf_counter()
        generated.append(nxt)
        for i in range(L):
            for kv in ("key", "value"):
                past[f"past_key_values.{i}.{kv}"] = res[f"present.{i}.{kv}"]
        cur = np.array([[nxt]], np.int64); total += 1
    dt = time.perf_counter() - t1
    return generated, t_first*1000, (new-1)/dt
results = {}
for rnd in range(2):
    for name, path in [("optimum-fp32", "/tmp/smol-optimum/model.onnx"), ("builder-fp32", "/tmp/smol-og-fp32/model.onnx"), ("builder-int4", "/tmp/smol-og-int4/model.onnx")]:
        g, ttft, tps = run(path)
        results.setdefault(name, []).append((round(ttft,1), round(tps,1)))
        if rnd == 0: print(name, repr(tok.decode(g[:20])))
print(results)
