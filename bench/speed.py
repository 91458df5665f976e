"""Speed bench: recover throughput and peak memory (faithful sequential loop vs our fastest path), relabel + student
training per epoch (stored vs online labels), and the label store's size vs the reference's one-file-per-batch layout.

    python bench/speed.py            # CPU, fashion_mnist, IPC 10, 5 experts: ~10 min on 2 busy cores (first run +3 min: experts)
    python bench/speed.py --quick    # ~1-2 min (after the experts are cached)
    python bench/speed.py --device cuda --compile --synthetic 32,224   # on a GPU: also CIFAR-size and 224 px settings
    python bench/speed.py --quick --data digits --experts 2 --out /tmp/s   # a smoke run in about a minute (tests/test_speed_bench.py: tinier still)

Writes bench/results/speed.json, speed.md and speed.SOURCE.md (command, commit, machine, load, wall time) (or --out).
The faithful loop is checked against ours first, in the timed setting: both are run for `--agree-steps` steps and the
share of pixels that agree is recorded (they optimise the same objective from the same starts and views; over many
steps a tie broken by float summation order moves one image, and the batch's BN statistics carry that to the rest). Experts are trained once and cached in
bench/.cache/ (git-ignored). Every timed recover variant runs in its own process, so its peak memory is its own.
"""
from __future__ import annotations
import argparse, dataclasses, io, json, math, os, platform, statistics, subprocess, sys, tempfile, threading, time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent)); sys.path.insert(0, str(HERE))

from cvdd_nb.core import atomic_write, make_generator, versions
from accuracy import git_commit
from cvdd_nb.data import Data, DatasetInfo, Split, load_dataset, normalize, pixel_bounds
from cvdd_nb.models import bn_layers, create_model
from cvdd_nb.experts import Expert, ExpertMeta, ExpertPool, resolve_flip, train_pool
from cvdd_nb.committee import committee_loss, committee_plan, compute_priors, unit_seed
from cvdd_nb.augment import apply_augment, crop_scale, draw_augment
from cvdd_nb.recover import RecoverConfig, cosine_lr, plan_units, recover, resolve_roll, unit_start
from cvdd_nb.relabel import (LabelStore, OnlineLabeler, RelabelConfig, apply_aug, batch_bounds, make_committee, relabel)
from cvdd_nb.evaluate import train_student

POOL = [('convnet', 'convnet', 0.25), ('resnet18', 'resnet18', 0.125), ('resnet50', 'resnet50', 0.0625),
        ('mobilenetv2', 'mobilenetv2', 0.25), ('shufflenetv2', 'shufflenetv2', 0.5)]

# ----------------------------------------------------------------------------------------------------------- helpers
class PeakRSS:
    "Peak resident memory of this process while the block runs (sampled every 2 ms), in MiB, and the RSS before it."
    def __init__(self): self.peak = self.before = 0.0
    @staticmethod
    def now()->float:
        with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
    def _watch(self):
        while not self._stop.is_set(): self.peak = max(self.peak, self.now()); time.sleep(0.002)
    def __enter__(self):
        self.before = self.peak = self.now(); self._stop = threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True); self._t.start(); return self
    def __exit__(self, *exc):
        self._stop.set(); self._t.join(); self.peak = max(self.peak, self.now())

def expert_pool(data:Data, cache:Path, threads:int, n:int=len(POOL))->ExpertPool:
    "The first `n` tiny experts of the bench, trained once and cached (Fashion-MNIST: 3k images, 2 epochs; digits: all, 4 epochs)."
    step, epochs = (20, 2) if len(data.train) > 20000 else (1, 4)
    sub = Data(data.train.subset(torch.arange(0, len(data.train), step)), data.test.subset(torch.arange(0, len(data.test), 5 if step > 1 else 1)), data.info)
    torch.set_num_threads(threads)
    return train_pool(POOL[:n], sub, cache/f'pool_{data.info.name}_{n}', dict(epochs=epochs, batch_size=64, lr=3e-3), quiet=True)

def synthetic(side:int, classes:int=10, n:int=64)->Data:
    "Random uint8 images of a given size (timing only: no real data is needed to time recover)."
    g = make_generator(0); ch = 3
    info = DatasetInfo(f'synthetic{side}', classes, [f'c{i}' for i in range(classes)], ch, (side, side), (0.5,) * ch, (0.25,) * ch, 'random')
    mk = lambda k: Split(torch.randint(0, 256, (k, ch, side, side), generator=g, dtype=torch.uint8), torch.arange(k) % classes)
    return Data(mk(n), mk(n), info)

def untrained_pool(data:Data, archs)->ExpertPool:
    "Untrained experts with random BN statistics (timing only)."
    out, i = [], data.info
    for k, (name, arch, w) in enumerate(archs):
        torch.manual_seed(k); m = create_model(arch, i.num_classes, in_chans=i.channels, img_size=i.img_size[0], width=w).eval()
        for l in bn_layers(m): l.running_mean.uniform_(-0.5, 0.5); l.running_var.uniform_(0.5, 2.0)
        meta = ExpertMeta(arch=m.cvdd_spec, dataset=i.name, class_names=i.class_names, in_chans=i.channels, img_size=list(i.img_size), mean=list(i.mean), std=list(i.std))
        out.append(Expert(m, meta, name=name))
    return ExpertPool(out)

# ------------------------------------------------------------------------------------- the faithful sequential loop
class _RefHook:
    "The reference's BN hook: mean over (N, H, W); variance of the input permuted to (C, N*H*W) and made contiguous."
    def __init__(self, module): self.h, self.r = module.register_forward_hook(self.hook), None
    def hook(self, module, inputs, output):
        x = inputs[0]; nch = x.shape[1]
        mean = x.mean([0, 2, 3])
        var = x.permute(1, 0, 2, 3).contiguous().view([nch, -1]).var(1, unbiased=False)
        self.r = torch.norm(module.running_var.data - var, 2) + torch.norm(module.running_mean.data - mean, 2)

def reference_recover(pool:ExpertPool, data:Data, cfg:RecoverConfig, device='cpu')->torch.Tensor:
    """Recover as the CV-DD/SRe2L reference code runs it: unit after unit (IPC index, chunk), a fresh torch.optim.Adam on
    the pixels, forward hooks on every BN layer of every expert for the whole run, one backward per step, clamping.
    It draws the same starts and views as `recover` (the units' generators), so it optimises the same objective."""
    info, T, K = data.info, cfg.iterations, data.info.num_classes
    priors = compute_priors(pool, cfg.prior, cfg.prior_values, data)
    units = plan_units(committee_plan(pool, cfg, priors), K, cfg.classes_per_chunk)
    roll, flip, (H, W) = resolve_roll(cfg.roll, min(info.img_size)), resolve_flip(cfg.flip, info.name), info.img_size
    lo, hi = pixel_bounds(info, device)
    models = [e.model.to(device).eval() for e in pool]
    hooks = [[_RefHook(l) for l in bn_layers(m)] for m in models]
    out = torch.empty(K * cfg.ipc, info.channels, H, W)
    try:
        for u in units:
            g = make_generator(unit_seed(cfg.seed, 'unit', u.k, u.chunk))
            x = unit_start(None, info, u.classes, u.k, g).to(device).requires_grad_(True)
            y = torch.tensor(u.classes, device=device)
            opt = torch.optim.Adam([x], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)
            for step in range(T):
                for pg in opt.param_groups: pg['lr'] = cosine_lr(step, T, cfg.lr)
                xa = apply_augment(x, draw_augment(len(x), H, W, True, crop_scale(step, T, cfg.min_scale, cfg.cda), flip, roll, g))
                loss = 0
                for w, i in zip(u.weights.tolist(), u.members):
                    ce = F.cross_entropy(models[i](xa), y)
                    bn = sum((cfg.first_bn_mul if li == 0 else 1.0) * h.r for li, h in enumerate(hooks[i]))
                    loss = loss + w * (ce + cfg.r_bn * bn)
                opt.zero_grad(); loss.backward(); opt.step()
                x.data = torch.maximum(torch.minimum(x.data, hi), lo)
            out[[c * cfg.ipc + u.k for c in u.classes]] = x.detach().cpu()
    finally:
        for hs in hooks:
            for h in hs: h.h.remove()
        for m in models: m.cpu()
    return out

def agreement(pool:ExpertPool, data:Data, cfg:RecoverConfig, steps:int, device='cpu')->dict:
    "The faithful loop and our sequential recover, `steps` steps each from the same starts and views: how far their images differ."
    cfg = cfg.replace(iterations=steps)
    ref, ours = reference_recover(pool, data, cfg, device), recover(pool, data, cfg, quiet=True).images
    d = (ref - ours).abs()
    return dict(steps=steps, median=float(d.median()), max=float(d.max()), share_within_1e_4=float((d <= 1e-4).float().mean()))

def clean_ce(pool:ExpertPool, data:Data, cfg:RecoverConfig, images:torch.Tensor)->float:
    "Mean committee cross-entropy of the final images, un-augmented (each IPC index with its own committee)."
    plan, tot = committee_plan(pool, cfg, compute_priors(pool, cfg.prior, cfg.prior_values, data)), 0.0
    labels = torch.arange(data.info.num_classes).repeat_interleave(cfg.ipc)
    with torch.no_grad():
        for p in plan:
            idx = list(range(p['k'], len(images), cfg.ipc))
            _, ce, _ = committee_loss([pool[n].model for n in p['names']], p['weights'], images[idx], labels[idx])
            tot += float((p['weights'] * ce[:, 0]).sum())
    return tot / len(plan)

# --------------------------------------------------------------------------------------------------- recover worker
VARIANTS = {
    'reference': 'faithful sequential loop (reference code structure: unit by unit, torch.optim.Adam, permute+var hooks)',
    'sequential': 'cvdd_nb recover, unit by unit (grouped=False): fused BN statistics only',
    'fastest': 'cvdd_nb recover, grouped + mixed committees + channels_last (+ AMP on CUDA)',
    'fastest_compile': 'fastest + torch.compile of the experts (compiled on a 2-step run first; compile time reported apart)',
}

def recover_cfg(a, variant:str)->RecoverConfig:
    base = RecoverConfig(ipc=a.ipc, iterations=a.iterations, device=a.device, amp=False, channels_last='no',
                         prior='equal' if a.dataset.startswith('synthetic') else 'accuracy')
    if variant in ('reference', 'sequential'): return base
    return base.replace(grouped=True, mix_committees=True, channels_last='yes', amp=a.device == 'cuda', compile=variant == 'fastest_compile')

def load_setting(a):
    if not a.dataset.startswith('synthetic'):
        data = load_dataset(a.dataset); return data, expert_pool(data, Path(a.cache), a.threads, a.experts)
    side = int(a.dataset.removeprefix('synthetic'))
    data = synthetic(side)
    if side > 64:   # ImageNet-style torchvision models for large images (the CIFAR-style stems keep full resolution)
        archs = [(n, f'tv:{n}', 1.0) for n in ('resnet18', 'resnet50', 'mobilenet_v2', 'shufflenet_v2_x0_5', 'densenet121')]
    else:
        archs = [(n, n, 1.0) for n in ('resnet18', 'resnet50', 'mobilenetv2', 'shufflenetv2', 'densenet121')]
        if a.device != 'cuda': archs = [(n, ar, 0.125) for n, ar, _ in archs]      # a CPU smoke run of the GPU setting
    return data, untrained_pool(data, archs)

def worker_recover(a)->dict:
    torch.set_num_threads(a.threads)
    data, pool = load_setting(a)
    cfg, dev = recover_cfg(a, a.variant), torch.device(a.device)
    compile_s = None
    if cfg.compile:      # compile once on a 2-step run of the same shapes (untimed), then time the steady state
        t0 = time.perf_counter(); recover(pool, data, cfg.replace(iterations=2), quiet=True); compile_s = time.perf_counter() - t0
    if dev.type == 'cuda': torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        images = reference_recover(pool, data, cfg, dev) if a.variant == 'reference' else recover(pool, data, cfg, quiet=True).images
        if dev.type == 'cuda': torch.cuda.synchronize()
        secs = time.perf_counter() - t0
    n_img = data.info.num_classes * a.ipc
    r = dict(variant=a.variant, seconds=secs, images=n_img, iterations=a.iterations, img_it_per_s=n_img * a.iterations / secs,
             s_per_image=secs / n_img, peak_rss_mib=round(mem.peak, 1), rss_before_mib=round(mem.before, 1),
             extra_rss_mib=round(mem.peak - mem.before, 1), compile_s=compile_s, ce=None if a.dataset.startswith('synthetic') else clean_ce(pool, data, cfg, images))
    if dev.type == 'cuda': r['cuda_peak_mib'] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if a.save_images: torch.save(images, a.save_images)
    return r

def run_worker(args:list, timeout=1800)->dict:
    p = subprocess.run([sys.executable, __file__, '--worker', *args], capture_output=True, text=True, timeout=timeout)
    if p.returncode: raise RuntimeError(f'worker {args} failed:\n{p.stderr[-3000:]}')
    return json.loads(p.stdout.strip().splitlines()[-1])

def bench_recover(a, dataset:str, variants:list, repeats:int, iterations:int)->dict:
    "Every variant `repeats` times, interleaved, each in a fresh process."
    runs = {v: [] for v in variants}
    for r in range(repeats):
        for v in variants:
            extra = ['--save-images', str(Path(a.cache)/f'recovered_{dataset}_{v}.pt')] if r == 0 else []
            res = run_worker(['--variant', v, '--dataset', dataset, '--iterations', str(iterations), '--ipc', str(a.ipc), '--experts', str(a.experts),
                              '--threads', str(a.threads), '--device', a.device, '--cache', a.cache, *extra])
            runs[v].append(res); print(f'  {dataset} {v:16s} run {r + 1}: {res["img_it_per_s"]:8.1f} image-it/s, peak +{res["extra_rss_mib"]:.0f} MiB', flush=True)
    out = {}
    for v, rs in runs.items():
        th = [x['img_it_per_s'] for x in rs]
        out[v] = dict(description=VARIANTS[v], img_it_per_s_median=statistics.median(th), img_it_per_s_range=[min(th), max(th)],
                      s_per_image_median=statistics.median(x['s_per_image'] for x in rs), extra_rss_mib_max=max(x['extra_rss_mib'] for x in rs),
                      peak_rss_mib_max=max(x['peak_rss_mib'] for x in rs), ce=rs[0]['ce'], runs=rs,
                      **({'cuda_peak_mib_max': max(x['cuda_peak_mib'] for x in rs)} if 'cuda_peak_mib' in rs[0] else {}))
    base = out[variants[0]]['img_it_per_s_median']
    for v in variants: out[v]['speedup_vs_' + variants[0]] = out[v]['img_it_per_s_median'] / base
    if 'sequential' in out:
        for v in variants: out[v]['speedup_vs_sequential'] = out[v]['img_it_per_s_median'] / out['sequential']['img_it_per_s_median']
    imgs = {v: torch.load(Path(a.cache)/f'recovered_{dataset}_{v}.pt') for v in variants}
    out['max_abs_diff_vs_' + variants[0]] = {v: float((imgs[v] - imgs[variants[0]]).abs().max()) for v in variants}
    return out

# ------------------------------------------------------------------------------------------ relabel + student train
def per_epoch(fn, epochs:int)->float:
    t0 = time.perf_counter(); r = fn(); return (time.perf_counter() - t0) / epochs, r

def bench_relabel(a, data:Data, pool:ExpertPool, images:torch.Tensor, labels:torch.Tensor, epochs:int, repeats:int)->dict:
    "Seconds per epoch: relabel (stored labels, made once), student on stored labels, student on online labels; faithful vs fast settings."
    priors = [e.meta.test_acc for e in pool]
    rows = {}
    for name, cl in (('faithful', 'no'), ('fast', 'yes')):
        rc, ec = RelabelConfig(epochs=epochs, channels_last=cl), dict(epochs=epochs, channels_last=cl)
        rel, stored, online = [], [], []
        for _ in range(repeats):
            t, store = per_epoch(lambda: relabel(images, pool, data.info, rc, priors), epochs); rel.append(t)
            stored.append(per_epoch(lambda: train_student(images, labels, data.info, store, ec, seed=0), epochs)[0])
            online.append(per_epoch(lambda: train_student(images, labels, data.info, OnlineLabeler(pool, data.info, rc, priors), ec, seed=0), epochs)[0])
        med = statistics.median
        rows[name] = dict(channels_last=cl, relabel_s_per_epoch=med(rel), student_stored_s_per_epoch=med(stored),
                          stored_total_s_per_epoch=med(rel) + med(stored), online_s_per_epoch=med(online),
                          ranges=dict(relabel=[min(rel), max(rel)], stored=[min(stored), max(stored)], online=[min(online), max(online)]))
        print(f'  relabel {name:8s}: relabel {med(rel):.3f} + student {med(stored):.3f} s/epoch (stored) vs online {med(online):.3f} s/epoch', flush=True)
    rows['speedup_fast_vs_faithful'] = dict(stored_total=rows['faithful']['stored_total_s_per_epoch'] / rows['fast']['stored_total_s_per_epoch'],
                                            online=rows['faithful']['online_s_per_epoch'] / rows['fast']['online_s_per_epoch'])
    return rows

# ------------------------------------------------------------------------------------------------- label storage
def fp32_logits(store:LabelStore, images:torch.Tensor, committee)->torch.Tensor:
    "The committee's float32 logits of every stored view, (epochs, n, K) like the store (what the reference keeps without --use-fp16)."
    return torch.stack([torch.cat([committee(apply_aug(images, store.aug(e, b))) for b in range(len(store.bounds))]) for e in range(store.epochs)])

def write_per_batch(store:LabelStore, logits:torch.Tensor, path:Path, fp16:bool)->tuple:
    """Write what the reference writes for the same epochs: epoch_<e>/batch_<b>.tar per batch, each a torch.save'd
    [crop coords (B, 4) float32 fractions, flips (B,) bool, mix index (B,) int64, lam (np.float64), box (4 np.int64),
    soft logits (B, K) float32, or float16 with --use-fp16]. Returns (files, bytes, allocated bytes)."""
    H, W = store.meta['img_size']; files = nbytes = alloc = 0
    for e in range(store.epochs):
        d = path/f'epoch_{e}'; d.mkdir(parents=True, exist_ok=True)
        for b, (s, t) in enumerate(store.bounds):
            a, z = store.aug(e, b), logits[e, s:t]
            coords = (a.crops.float() / torch.tensor([H, W, H, W])).float()
            y0, y1, x0, x1 = a.box.tolist()
            cfg = [coords, a.flips.clone(), a.perm.clone(), np.float64(a.lam), [np.int64(v) for v in (x0, y0, x1, y1)], z.half() if fp16 else z.float().clone()]   # clone: a view would save the whole storage
            f = d/f'batch_{b}.tar'; torch.save(cfg, f)
            st = f.stat(); files += 1; nbytes += st.st_size; alloc += st.st_blocks * 512
    return files, nbytes, alloc

def bench_labels(a, data:Data, pool:ExpertPool, images:torch.Tensor, labels:torch.Tensor, epochs:int, seeds:list)->dict:
    "Store bytes and files vs the reference's per-batch files, and the accuracy of students trained on each label precision."
    priors = [e.meta.test_acc for e in pool]
    rc = RelabelConfig(epochs=epochs)
    tmp = Path(tempfile.mkdtemp(prefix='cvdd_labels_'))
    try:
        store = relabel(images, pool, data.info, rc, priors, out=tmp/'store')
        topk = relabel(images, pool, data.info, rc.replace(topk=3), priors, out=tmp/'store_top3')
        z32 = fp32_logits(store, images, make_committee(pool, data.info, rc, priors))
        ref32, ref16 = write_per_batch(store, z32, tmp/'ref32', fp16=False), write_per_batch(store, z32, tmp/'ref16', fp16=True)
        # the reference's fp32 labels, replayed through our trainer: a store whose logits are the float32 ones
        t32 = dict(store.tensors); t32['logits'] = z32                 # (epochs, n, K), by position in each epoch's order, as the store
        fp32 = LabelStore(t32, store.meta)
        ec = dict(epochs=epochs)
        acc = {}
        for name, src in (('fp32 per-batch (reference content)', fp32), ('fp16 store (ours)', store), ('top-3 fp16 store (ours)', topk)):
            acc[name] = [train_student(images, labels, data.info, src, ec, seed=s, test=data.test).acc for s in seeds]
            print(f'  labels {name:36s}: acc {acc[name]}', flush=True)
        ours = dict(files=len(store.files), bytes=store.nbytes)
        ours_k = dict(files=len(topk.files), bytes=topk.nbytes)
        batches = len(batch_bounds(len(images), rc.batch_size))
        res = dict(epochs=epochs, images=len(images), batches_per_epoch=batches, store=ours, store_top3=ours_k,
                   per_batch_fp32=dict(files=ref32[0], bytes=ref32[1], allocated_bytes=ref32[2]),
                   per_batch_fp16=dict(files=ref16[0], bytes=ref16[1], allocated_bytes=ref16[2]), accuracy=acc,
                   file_ratio=ours['files'] / ref32[0], byte_ratio_vs_fp32=ours['bytes'] / ref32[1], byte_ratio_vs_fp16=ours['bytes'] / ref16[1],
                   byte_ratio_top3_vs_fp16=ours_k['bytes'] / ref16[1],
                   max_logit_diff_fp16_vs_fp32=float((store.tensors['logits'].float() - fp32.tensors['logits']).abs().max()))
        # the same layout at the reference's 300 epochs (files scale with epochs; bytes per file from this run)
        per_file = ref32[1] / ref32[0]
        res['at_300_epochs'] = dict(per_batch_files=300 * batches, per_batch_bytes=round(300 * batches * per_file),
                                    store_files=2, store_bytes=round(ours['bytes'] / epochs * 300))
        return res
    finally:
        import shutil; shutil.rmtree(tmp, ignore_errors=True)

# ------------------------------------------------------------------------------------------------------- profiles
def profile_tables(a, data, pool, images, labels, rows:int=15)->dict:
    "torch.profiler tables (self CPU time): 3 recover steps (faithful loop, sequential, fastest), 2 relabel epochs, 2 student epochs."
    from torch.profiler import profile, ProfilerActivity
    def prof(fn):
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as p: fn()
        return p.key_averages().table(sort_by='self_cpu_time_total', row_limit=rows)
    out = {}
    for v in ('reference', 'sequential', 'fastest'):
        cfg = recover_cfg(a, v).replace(iterations=3)
        out[f'recover_{v}'] = prof(lambda: reference_recover(pool, data, cfg) if v == 'reference' else recover(pool, data, cfg, quiet=True))
    priors = [e.meta.test_acc for e in pool]
    for cl in ('no', 'yes'):
        rc = RelabelConfig(epochs=2, channels_last=cl)
        out[f'relabel_channels_last_{cl}'] = prof(lambda: relabel(images, pool, data.info, rc, priors))
        st = relabel(images, pool, data.info, rc, priors)
        out[f'student_channels_last_{cl}'] = prof(lambda: train_student(images, labels, data.info, st, dict(epochs=2, channels_last=cl)))
    return out

# ---------------------------------------------------------------------------------------------------------- report
def markdown(res:dict)->str:
    r, L = res, []
    L.append(f"# Speed bench ({r['setting']['device']}, {r['setting']['threads']} thread(s), {r['setting']['mode']})\n")
    L.append(f"Machine: {r['machine']['cpu']}; torch {r['machine']['torch']}. Setting: {r['setting']['dataset']}, IPC {r['setting']['ipc']}, "
             f"{r['setting']['iterations']} iterations, {len(r['setting']['pool'])} experts ({', '.join(r['setting']['pool'])}), "
             f"{r['setting']['repeats']} run(s) per variant, medians (ranges). Command `{r.get('command', '?')}` at commit `{r.get('commit', '?')}` "
             f"(see the SOURCE file).\n")
    if 'agreement' in r:
        g = r['agreement']
        L.append(f"The faithful loop and our sequential recover, {g['steps']} steps from the same starts and views: {g['share_within_1e_4']:.2%} of "
                 f"pixels within 1e-4 (median difference {g['median']:.1e}, max {g['max']:.1e}).")
        seq = r['recover'].get(r['setting']['dataset'], {}).get('max_abs_diff_vs_reference', {}).get('sequential')
        if seq is not None and seq > 1e-4:      # said only when the timed run's final images do differ
            L[-1] += (f" After the timed run's {r['setting']['iterations']} iterations their images differ by up to {seq:.2g}: a tie broken by "
                      "float summation order moves one image and the batch's BN statistics carry it to the rest (last column: the objective they reach).")
        L[-1] += '\n'
    for ds, rec in r['recover'].items():
        L.append(f"## Recover: {ds}\n")
        first = next(iter(rec))
        L.append(f"| variant | image-iterations/s | s per image | speed-up vs {'the faithful loop' if first == 'reference' else first} | vs our sequential | peak RSS (+ over start) MiB | final committee CE |")
        L.append('|---|---|---|---|---|---|---|')
        for v, x in rec.items():
            if v.startswith('max_abs'): continue
            lo, hi = x['img_it_per_s_range']
            mem = f"{x['peak_rss_mib_max']:.0f} (+{x['extra_rss_mib_max']:.0f})" + (f", CUDA {x['cuda_peak_mib_max']:.0f}" if 'cuda_peak_mib_max' in x else '')
            ce = '-' if x['ce'] is None else f"{x['ce']:.3f}"
            L.append(f"| {v} | {x['img_it_per_s_median']:.1f} ({lo:.1f}-{hi:.1f}) | {x['s_per_image_median']:.3f} | {x['speedup_vs_' + first]:.2f}x | "
                     f"{format(x['speedup_vs_sequential'], '.2f') + 'x' if 'speedup_vs_sequential' in x else '-'} | {mem} | {ce} |")
        for v, x in rec.items():
            if not v.startswith('max_abs') and x['runs'][0].get('compile_s') is not None:
                L.append(f"\n{v}: compiling took {x['runs'][0]['compile_s']:.0f} s before the timed run (not included above; its memory figures start after compiling).")
        L.append('')
    if 'relabel' in r:
        x = r['relabel']
        L.append('## Relabel + student training, seconds per epoch\n')
        L.append('| settings | relabel | student on stored labels | stored total | online (teachers in the loop) |')
        L.append('|---|---|---|---|---|')
        for k in ('faithful', 'fast'):
            y = x[k]; L.append(f"| {k} (channels_last={y['channels_last']}) | {y['relabel_s_per_epoch']:.3f} | {y['student_stored_s_per_epoch']:.3f} | "
                               f"{y['stored_total_s_per_epoch']:.3f} | {y['online_s_per_epoch']:.3f} |")
        L.append(f"\nfast vs faithful: stored {x['speedup_fast_vs_faithful']['stored_total']:.2f}x, online {x['speedup_fast_vs_faithful']['online']:.2f}x.\n")
    if 'labels' in r:
        x = r['labels']
        L.append(f"## Label storage ({x['epochs']} epochs x {x['batches_per_epoch']} batches, {x['images']} images)\n")
        L.append('| layout | files | bytes | allocated on disk |')
        L.append('|---|---|---|---|')
        L.append(f"| reference: one file per batch per epoch, fp32 logits | {x['per_batch_fp32']['files']} | {x['per_batch_fp32']['bytes']:,} | {x['per_batch_fp32']['allocated_bytes']:,} |")
        L.append(f"| reference with --use-fp16 | {x['per_batch_fp16']['files']} | {x['per_batch_fp16']['bytes']:,} | {x['per_batch_fp16']['allocated_bytes']:,} |")
        L.append(f"| ours: one store, fp16 logits | {x['store']['files']} | {x['store']['bytes']:,} | |")
        L.append(f"| ours: one store, top-3 fp16 | {x['store_top3']['files']} | {x['store_top3']['bytes']:,} | |")
        L.append(f"\nFiles: {x['file_ratio']:.4f} of the per-batch layout (target <= 0.01); bytes: {x['byte_ratio_vs_fp32']:.3f} of fp32 per-batch, "
                 f"{x['byte_ratio_vs_fp16']:.3f} of fp16 per-batch (target <= 0.5). At 300 epochs: {x['at_300_epochs']['per_batch_files']:,} files vs 2.\n")
        L.append('| labels | student test accuracy % per seed |')
        L.append('|---|---|')
        for k, v in x['accuracy'].items(): L.append(f"| {k} | {', '.join(f'{a:.2f}' for a in v)} |")
        L.append(f"\nmax |fp16 - fp32| logit: {x['max_logit_diff_fp16_vs_fp32']:.4f}\n")
    if r.get('targets'):
        L.append('## Targets\n')
        for k, v in r['targets'].items(): L.append(f"- {k}: {v['value']:.3g} (target {v['target']}) **{'met' if v['met'] else 'NOT met'}**")
        L.append('')
    return '\n'.join(L) + '\n'

def source_md(res:dict, name:str)->str:
    "Where the figures came from: command, commit, machine, load, wall time (written beside the tables by every run)."
    m = res['machine']
    return (f"# Where {name}.md / .json come from\n\nWritten by `{res['command']}` at commit `{res['commit']}` on {m['cpu']} "
            f"({m['cores']} cores; torch {m['torch']}{', ' + m['cuda'] if m.get('cuda') else ''}), {res['setting']['threads']} thread(s), "
            f"in {res['seconds'] / 60:.1f} min. Load average (1, 5, 15 min) at the start {', '.join(f'{v:.2f}' for v in m['load_avg_start'])}, "
            f"at the end {', '.join(f'{v:.2f}' for v in m['load_avg_end'])}: a load above the threads used means the timings shared the CPU.\n")

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='a ~1-2 min run: fewer iterations, epochs and repeats')
    ap.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    ap.add_argument('--threads', type=int, default=1, help='torch intra-op threads (1: steadiest on a shared machine)')
    ap.add_argument('--ipc', type=int, default=10)
    ap.add_argument('--iterations', type=int, default=None, help='recover iterations (default 60, quick 10)')
    ap.add_argument('--repeats', type=int, default=None, help='runs per recover variant (default 2, quick 1)')
    ap.add_argument('--epochs', type=int, default=None, help='relabel / student timing epochs (default 12, quick 3)')
    ap.add_argument('--label-epochs', type=int, default=30, help='epochs of the label-storage comparison and its students (30 x 7 batches = 210 per-batch files)')
    ap.add_argument('--compile', action='store_true', help='also time fastest + torch.compile (CPU: minutes of compiling)')
    ap.add_argument('--synthetic', default='', help='comma-separated image sides (e.g. 32,224): also time recover on random data with untrained full-width experts')
    ap.add_argument('--variants', default='', help=f'comma-separated recover variants to time (default: reference,sequential,fastest[,fastest_compile]); one of {", ".join(VARIANTS)}')
    ap.add_argument('--markdown', default='', help='only rewrite the markdown table of an existing speed JSON file, then stop')
    ap.add_argument('--profile', action='store_true', help='only write torch.profiler tables (recover, relabel, student; self CPU time) to <out>/profile.txt')
    ap.add_argument('--skip', default='', help='comma-separated sections to skip: recover,relabel,labels')
    ap.add_argument('--data', default='fashion_mnist', help='the real dataset of the main setting (digits: a smoke run)')
    ap.add_argument('--experts', type=int, default=len(POOL), help=f'the first N experts of the bench pool ({", ".join(n for n, _, _ in POOL)})')
    ap.add_argument('--agree-steps', type=int, default=10, help='steps of the faithful-loop agreement check (0: skip it)')
    ap.add_argument('--cache', default=str(HERE/'.cache'))
    ap.add_argument('--out', default=str(HERE/'results'))
    # worker mode (internal)
    ap.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--variant', default='fastest', help=argparse.SUPPRESS)
    ap.add_argument('--dataset', default='fashion_mnist', help=argparse.SUPPRESS)
    ap.add_argument('--save-images', default='', help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault('CVDD_PROGRESS', '0'); os.environ.setdefault('HF_HUB_OFFLINE', '1')
    if a.markdown:
        p = Path(a.markdown); p.with_suffix('.md').write_text(markdown(json.loads(p.read_text()))); print(p.with_suffix('.md').read_text()); return
    if a.worker:
        a.iterations = a.iterations or 10
        print(json.dumps(worker_recover(a))); return
    iters = a.iterations = a.iterations or (10 if a.quick else 60); repeats = a.repeats or (1 if a.quick else 2); epochs = a.epochs or (3 if a.quick else 12)
    seeds = [0] if a.quick else [0, 1]
    skip = set(filter(None, a.skip.split(',')))
    torch.set_num_threads(a.threads)
    Path(a.cache).mkdir(parents=True, exist_ok=True); Path(a.out).mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    ds = a.dataset = a.data; data = load_dataset(ds)
    t = time.perf_counter(); pool = expert_pool(data, Path(a.cache), a.threads, a.experts); print(f'experts ready ({time.perf_counter() - t:.0f} s)\n{pool}', flush=True)
    cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), platform.processor()) if Path('/proc/cpuinfo').exists() else platform.processor()
    res = dict(setting=dict(mode='quick' if a.quick else 'full', device=a.device, threads=a.threads, dataset=ds, ipc=a.ipc, iterations=iters,
                            repeats=repeats, epochs=epochs, label_epochs=a.label_epochs, seeds=seeds, pool=pool.names),
               machine=dict(cpu=cpu, cores=os.cpu_count(), torch=torch.__version__, cuda=torch.cuda.get_device_name(0) if a.device == 'cuda' else None,
                            load_avg_start=os.getloadavg()), versions=versions(), recover={})
    variants = a.variants.split(',') if a.variants else ['reference', 'sequential', 'fastest'] + (['fastest_compile'] if a.compile else [])
    for v in variants:
        if v not in VARIANTS: ap.error(f'unknown variant {v!r}: use {", ".join(VARIANTS)}')
    if a.profile:                      # profile only
        rec_path = Path(a.cache)/f'recovered_{ds}_fastest.pt'
        images = torch.load(rec_path) if rec_path.exists() else normalize(data.train.x[:a.ipc * 10], data.info)
        tabs = profile_tables(a, data, pool, images, torch.arange(10).repeat_interleave(a.ipc)[:len(images)])
        (Path(a.out)/'profile.txt').write_text('\n\n'.join(f'== {k} ==\n{v}' for k, v in tabs.items()) + '\n')
        print(f'wrote {Path(a.out)/"profile.txt"}'); return
    if 'recover' not in skip:
        if a.agree_steps:
            res['agreement'] = agreement(pool, data, recover_cfg(a, 'sequential'), a.agree_steps)
            print(f"faithful loop vs ours, {a.agree_steps} steps: {res['agreement']['share_within_1e_4']:.2%} of pixels within 1e-4, max {res['agreement']['max']:.1e}", flush=True)
        print(f'recover: {ds} IPC {a.ipc}, {iters} iterations', flush=True)
        res['recover'][ds] = bench_recover(a, ds, variants, repeats, iters)
        for side in filter(None, a.synthetic.split(',')):
            print(f'recover: synthetic {side} px', flush=True)
            res['recover'][f'synthetic{side}'] = bench_recover(a, f'synthetic{side}', variants, repeats, max(2, iters // 5))
    rec_path = Path(a.cache)/f'recovered_{ds}_fastest.pt'
    images = torch.load(rec_path) if rec_path.exists() else normalize(data.train.x[:a.ipc * 10], data.info)
    labels = torch.arange(10).repeat_interleave(a.ipc)[:len(images)]
    if 'relabel' not in skip:
        print(f'relabel + student: {epochs} epochs', flush=True)
        res['relabel'] = bench_relabel(a, data, pool, images, labels, epochs, repeats)
    if 'labels' not in skip:
        print(f'label storage: {a.label_epochs} epochs', flush=True)
        res['labels'] = bench_labels(a, data, pool, images, labels, a.label_epochs, seeds)
    tg = {}
    if ds in res['recover'] and {'reference', 'sequential', 'fastest'} <= set(variants):
        rr = res['recover'][ds]
        tg['recover: fastest vs faithful sequential loop (x)'] = dict(value=rr['fastest']['speedup_vs_reference'], target='>= 2', met=rr['fastest']['speedup_vs_reference'] >= 2)
        tg['recover: fastest vs our own sequential path (x, for information)'] = dict(value=rr['fastest']['speedup_vs_sequential'], target='-', met=True)
    if 'labels' in res:
        x = res['labels']; accs = x['accuracy']; ref, ours = [statistics.fmean(v) for v in list(accs.values())[:2]]
        tg['label store: files / per-batch files'] = dict(value=x['file_ratio'], target='<= 0.01', met=x['file_ratio'] <= 0.01)
        tg['label store: bytes / per-batch bytes (fp16 reference)'] = dict(value=x['byte_ratio_vs_fp16'], target='<= 0.5', met=x['byte_ratio_vs_fp16'] <= 0.5)
        tg['label store: accuracy fp16 store - fp32 per-batch (points)'] = dict(value=ours - ref, target='|diff| <= 1', met=abs(ours - ref) <= 1.0)
    res['targets'] = tg
    res['machine']['load_avg_end'] = os.getloadavg(); res['seconds'] = round(time.perf_counter() - t_all, 1)
    res['command'], res['commit'] = ' '.join(['python', 'bench/speed.py', *sys.argv[1:]]), git_commit()
    out = Path(a.out); name = 'speed' if a.device == 'cpu' else 'speed_cuda'
    atomic_write(out/f'{name}.json', json.dumps(res, indent=1, default=float) + '\n')
    md = markdown(res); atomic_write(out/f'{name}.md', md); atomic_write(out/f'{name}.SOURCE.md', source_md(res, name))
    print('\n' + md); print(f'wrote {out/name}.json and .md in {res["seconds"]:.0f} s')

if __name__ == '__main__':
    main()
