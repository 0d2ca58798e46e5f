"""
PyTorch side of `npm run bench`: a JSON-lines server on stdin/stdout, so the
TypeScript bench can interleave its own repetitions with these in one run
(the machine is shared; ratios within one run are what can be trusted).

Requests (one JSON object a line), each answered by one JSON line:
  {"op": "init", "arch": {...}, "vocabSize": n, "batch": 8, "schedule": {...}, "device": "cpu"|"cuda"}
      -> {"torch": version, "device": name, "unet": [[name, shape], ...], "reference": [...]}
         (shapes in the TypeScript layout, for the parameter check; "cuda"
         where torch.cuda.is_available(), else the request fails)
  {"op": "time", "net": "unet"|"reference", "mode": "forward"|"train", "threads": n}
      -> {"ms": wall time of one repetition, "cpu": its CPU time (all threads)}
  {"op": "check", "file": path, "batch": b, "tokens": [...], "mask": [...], "t": [...]}
      -> {"out": [...]}  the UNet's output at the TypeScript weights and input
         in `file` (float32: parameters in TypeScript order, then x as NHWC)

Run it with the system interpreter: `command -p python3 bench/torch/server.py`.
Benchmark anchor only; the library never depends on it.
"""
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

from shapeworld import ReferenceNet, UNet


def use_device(device):
    """New tensors on `device` (torch >= 2.0); older torch (Debian's) has only the CPU here."""
    if hasattr(torch, "set_default_device"):
        torch.set_default_device(device)
    elif device.type != "cpu":
        raise RuntimeError(f"torch {torch.__version__} cannot default new tensors to {device}")


class Bench:
    def __init__(self, req):
        use_device(torch.device("cpu"))
        torch.manual_seed(0)
        self.batch = req["batch"]
        a = req["arch"]
        self.unet = UNet(a, req["vocabSize"])
        self.ref = ReferenceNet()
        # Built (seeded) on the CPU, then moved; what forward creates (arange,
        # full) follows the default device.
        self.device = torch.device(req.get("device", "cpu"))
        for net in (self.unet, self.ref):
            net.params = {k: torch.nn.Parameter(v.detach().to(self.device)) for k, v in net.params.items()}
        use_device(self.device)
        s = req["schedule"]
        betas = torch.linspace(s["betaStart"], s["betaEnd"], s["trainSteps"], dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - betas, 0).to(torch.float32).to(self.device)
        self.train_steps = s["trainSteps"]
        b, size, c = self.batch, a["imageSize"], a["channels"]
        # One fixed batch, as bench/TrainingBench.ts: images in [-1, 1], prompts of 4-9 tokens.
        self.x0 = torch.rand(b, c, size, size) * 2 - 1
        lengths = torch.randint(4, 10, (b,))
        self.mask = (torch.arange(a["maxTokens"])[None] < lengths[:, None]).float()
        self.tokens = (torch.randint(2, req["vocabSize"] + 2, (b, a["maxTokens"])) * self.mask.long())
        # Same optimiser as AdamW.defaults: betas (0.9, 0.999), eps 1e-8, no decay, grad norm clipped at 1.
        self.unet_opt = torch.optim.AdamW(list(self.unet.params.values()), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
        self.ref_x = torch.randn(8, 3, 16, 16)
        self.ref_opt = torch.optim.AdamW(list(self.ref.params.values()), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)

    def unet_forward(self):
        with torch.inference_mode():
            t = torch.full((self.batch,), 500)
            ac = self.alphas_cumprod[t][:, None, None, None]
            v = self.unet.forward(self.x0, t, self.tokens, self.mask)
            eps = ac.sqrt() * v + (1 - ac).sqrt() * self.x0  # eps from v at x_t = x0 (as Denoiser.eps)
            float(eps[0, 0, 0, 0])

    def unet_train(self):
        # As Pretrain.trainStep: draw t and noise, v-prediction MSE, clip, AdamW.
        t = torch.randint(0, self.train_steps, (self.batch,))
        noise = torch.randn_like(self.x0)
        ac = self.alphas_cumprod[t][:, None, None, None]
        xt = ac.sqrt() * self.x0 + (1 - ac).sqrt() * noise
        target = ac.sqrt() * noise - (1 - ac).sqrt() * self.x0
        loss = F.mse_loss(self.unet.forward(xt, t, self.tokens, self.mask), target)
        self.unet_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.params.values(), 1.0)
        self.unet_opt.step()
        float(loss)

    def ref_forward(self):
        with torch.inference_mode():
            float(self.ref.forward(self.ref_x)[0, 0, 0, 0])

    def ref_train(self):
        loss = self.ref.forward(self.ref_x).square().mean()
        self.ref_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.ref.params.values(), 1.0)
        self.ref_opt.step()
        float(loss)

    def check(self, req):
        b = req["batch"]
        a = self.unet.a
        flat = torch.from_numpy(__import__("numpy").fromfile(req["file"], dtype="<f4"))
        n = sum(math.prod(s[1]) for s in self.unet.specs)
        self.unet.load_ts(flat[:n])
        x = flat[n:].reshape(b, a["imageSize"], a["imageSize"], a["channels"]).permute(0, 3, 1, 2).to(self.device)
        with torch.inference_mode():
            out = self.unet.forward(x, torch.tensor(req["t"], dtype=torch.float32),
                                    torch.tensor(req["tokens"], dtype=torch.long).reshape(b, -1),
                                    torch.tensor(req["mask"], dtype=torch.float32).reshape(b, -1))
        return out.permute(0, 2, 3, 1).reshape(-1).tolist()


def main():
    bench = None
    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        if op == "init":
            bench = Bench(req)
            reply = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if bench.device.type == "cuda" else "cpu", "unet": bench.unet.ts_shapes(), "reference": bench.ref.ts_shapes()}
        elif op == "time":
            torch.set_num_threads(req["threads"])
            f = {("unet", "forward"): bench.unet_forward, ("unet", "train"): bench.unet_train,
                 ("reference", "forward"): bench.ref_forward, ("reference", "train"): bench.ref_train}[(req["net"], req["mode"])]
            c0 = time.process_time()
            t0 = time.perf_counter()
            f()
            if bench.device.type == "cuda":
                torch.cuda.synchronize()
            # CPU time too: with one thread it hardly moves with other people's load
            reply = {"ms": (time.perf_counter() - t0) * 1000, "cpu": (time.process_time() - c0) * 1000}
        elif op == "check":
            reply = {"out": bench.check(req)}
        else:
            reply = {"error": f"unknown op {op}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
