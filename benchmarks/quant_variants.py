# Exploration behind the quantization defaults: per-tensor vs per-channel, reduce_range, calibration method.
# Decided on the calibration split (never the test split). Needs `make foundation` first. Output: see BENCHMARKS.md.
import json, time
from edgeshrink.compress import quantize, QuantConfig
from edgeshrink.compress.quantize.classifier import split_for
from edgeshrink.runtime import load, read_manifest
src='runs/demo/bundle'
split=split_for(read_manifest(src), None, True)
def acc(path, part):
    p=load(path,verify=False).predict(part.texts).labels
    return sum(a==b for a,b in zip(p,part.labels))/len(part)
base=acc(src, split.calibration)
print('fp32 cal', base, flush=True)
variants={
 'dyn-pt-rr': dict(method='dynamic-int8', per_channel=False),
 'dyn-pc-rr': dict(method='dynamic-int8', per_channel=True),
 'dyn-pc-norr': dict(method='dynamic-int8', per_channel=True, reduce_range=False),
 'st-pt-minmax': dict(method='static-int8', per_channel=False),
 'st-pc-minmax': dict(method='static-int8', per_channel=True),
 'st-pc-pct': dict(method='static-int8', per_channel=True, calibration_method='percentile'),
 'st-pc-norr': dict(method='static-int8', per_channel=True, reduce_range=False),
}
for name, kw in variants.items():
    t=time.time()
    m=quantize(src, f'/tmp/q/v-{name}', QuantConfig(evaluate=False, **kw), force=True)
    print(name, 'size%', round(100*m['size_bytes']/read_manifest(src)['size_bytes'],2), 'cal drop', round(100*(base-acc(f'/tmp/q/v-{name}', split.calibration)),2), round(time.time()-t), flush=True)
