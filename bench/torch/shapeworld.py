"""
The ShapeWorld UNet of src/model/UNet.ts and the 4-conv reference net of
bench/unet.ts, written as a PyTorch user would write them (NCHW, F.conv2d,
F.group_norm, F.embedding, nn-style [out, in] linear weights), with the
same parameter names and shapes as the TypeScript model.

Benchmark anchor only: the library never imports this.
"""
import math

import torch
import torch.nn.functional as F


def conv_spec(name, k, cin, cout, zero=False):
    # torch layout [cout, cin, k, k]; TypeScript's is [k, k, cin, cout]
    return [(f"{name}.w", (cout, cin, k, k), "zeros" if zero else ("normal", math.sqrt(2 / (k * k * cin))), "conv"),
            (f"{name}.b", (cout,), "zeros", "")]


def linear_spec(name, cin, cout, zero=False, bias=True):
    # torch layout [cout, cin]; TypeScript's is [cin, cout]
    out = [(f"{name}.w", (cout, cin), "zeros" if zero else ("normal", math.sqrt(1 / cin)), "linear")]
    if bias:
        out.append((f"{name}.b", (cout,), "zeros", ""))
    return out


def norm_spec(name, c):
    return [(f"{name}.g", (c,), "ones", ""), (f"{name}.b", (c,), "zeros", "")]


def to_ts_shape(shape, layout):
    """Shape of the same parameter in the TypeScript model's layout."""
    if layout == "conv":
        o, i, kh, kw = shape
        return [kh, kw, i, o]
    if layout == "linear":
        o, i = shape
        return [i, o]
    return list(shape)


def to_torch(value, shape, layout):
    """A flat parameter in TypeScript layout -> torch layout."""
    if layout == "conv":
        o, i, kh, kw = shape
        return value.reshape(kh, kw, i, o).permute(3, 2, 0, 1).contiguous()
    if layout == "linear":
        o, i = shape
        return value.reshape(i, o).t().contiguous()
    return value.reshape(shape)


class UNet:
    """Mirror of src/model/UNet.ts (paramSpecs and forward), functional style."""

    def __init__(self, arch, vocab_size, seed=0):
        self.a = arch
        self.specs = self._specs(vocab_size)
        g = torch.Generator().manual_seed(seed)
        self.params = {}
        for name, shape, init, _ in self.specs:
            if init == "zeros":
                t = torch.zeros(shape)
            elif init == "ones":
                t = torch.ones(shape)
            else:
                t = torch.randn(shape, generator=g) * init[1]
            self.params[name] = torch.nn.Parameter(t)

    def patch(self):
        return self.a.get("patchSize", 1)

    def levels(self):
        a = self.a
        return [dict(ch=a["baseChannels"] * m, res=(a["imageSize"] // self.patch()) >> i, i=i) for i, m in enumerate(a["channelMult"])]

    def _res_specs(self, name, cin, cout, tdim):
        return [*norm_spec(f"{name}.n1", cin), *conv_spec(f"{name}.c1", 3, cin, cout), *linear_spec(f"{name}.t", tdim, cout),
                *norm_spec(f"{name}.n2", cout), *conv_spec(f"{name}.c2", 3, cout, cout, True),
                *(linear_spec(f"{name}.skip", cin, cout) if cin != cout else [])]

    def _attn_specs(self, name, c, kv, norm=True):
        return [*(norm_spec(f"{name}.n", c) if norm else []), *linear_spec(f"{name}.q", c, c, False, False),
                *linear_spec(f"{name}.k", kv, c, False, False), *linear_spec(f"{name}.v", kv, c, False, False),
                *linear_spec(f"{name}.o", c, c, True)]

    def _specs(self, vocab_size):
        a = self.a
        d = a["textDim"]
        td = a["baseChannels"] * 4
        out = [("text.tok", (vocab_size + 2, d), ("normal", 0.02), ""), ("text.pos", (a["maxTokens"], d), ("normal", 0.02), "")]
        for l in range(a["textLayers"]):
            out += [*norm_spec(f"text.l{l}.n1", d), *self._attn_specs(f"text.l{l}.attn", d, d, norm=False),
                    *norm_spec(f"text.l{l}.n2", d), *linear_spec(f"text.l{l}.fc1", d, 4 * d), *linear_spec(f"text.l{l}.fc2", 4 * d, d, True)]
        out += norm_spec("text.out", d)
        out += [*linear_spec("time.fc1", a["baseChannels"], td), *linear_spec("time.fc2", td, td)]
        if a.get("pooledText", False):
            out += linear_spec("text.pool", d, td)
        L = self.levels()
        out += conv_spec("in", 3, a["channels"] * self.patch() ** 2, L[0]["ch"])
        skips = [L[0]["ch"]]
        ch = L[0]["ch"]
        for lv in L:
            for r in range(a["numResBlocks"]):
                out += self._res_specs(f"down{lv['i']}.res{r}", ch, lv["ch"], td)
                ch = lv["ch"]
                if lv["res"] in a["attentionResolutions"]:
                    out += self._attn_specs(f"down{lv['i']}.xattn{r}", ch, d)
                skips.append(ch)
            if lv["i"] < len(L) - 1:
                skips.append(ch)
        out += [*self._res_specs("mid.res0", ch, ch, td), *self._attn_specs("mid.sattn", ch, ch),
                *self._attn_specs("mid.xattn", ch, d), *self._res_specs("mid.res1", ch, ch, td)]
        for lv in reversed(L):
            for r in range(a["numResBlocks"] + 1):
                skip = skips.pop()
                out += self._res_specs(f"up{lv['i']}.res{r}", ch + skip, lv["ch"], td)
                ch = lv["ch"]
                if lv["res"] in a["attentionResolutions"]:
                    out += self._attn_specs(f"up{lv['i']}.xattn{r}", ch, d)
        out += [*norm_spec("out.n", ch), *conv_spec("out", 3, ch, a["channels"] * self.patch() ** 2, True)]
        return out

    def ts_shapes(self):
        return [[name, to_ts_shape(shape, layout)] for name, shape, _, layout in self.specs]

    def load_ts(self, flat):
        """Parameters from one flat float32 tensor in the TypeScript model's order and layout."""
        o = 0
        with torch.no_grad():
            for name, shape, _, layout in self.specs:
                n = math.prod(shape)
                self.params[name].copy_(to_torch(flat[o:o + n], shape, layout))
                o += n

    # --- layers -------------------------------------------------------------
    def lin(self, name, x):
        return F.linear(x, self.params[f"{name}.w"], self.params.get(f"{name}.b"))

    def conv(self, name, x):
        return F.conv2d(x, self.params[f"{name}.w"], self.params[f"{name}.b"], padding=self.params[f"{name}.w"].shape[-1] // 2)

    def gn(self, name, x):
        return F.group_norm(x, min(self.a["groups"], x.shape[1]), self.params[f"{name}.g"], self.params[f"{name}.b"], 1e-5)

    def ln(self, name, x):
        return F.layer_norm(x, (x.shape[-1],), self.params[f"{name}.g"], self.params[f"{name}.b"], 1e-5)

    def attention(self, name, q, kv, bias=None):
        b, n, c = q.shape
        m = kv.shape[1]
        heads = self.a["heads"]
        dh = c // heads
        split = lambda t, length: t.reshape(b, length, heads, dh).transpose(1, 2)
        Q, K, V = split(self.lin(f"{name}.q", q), n), split(self.lin(f"{name}.k", kv), m), split(self.lin(f"{name}.v", kv), m)
        scores = Q @ K.transpose(-1, -2) * (1 / math.sqrt(dh))
        if bias is not None:
            scores = scores + bias
        out = (scores.softmax(-1) @ V).transpose(1, 2).reshape(b, n, c)
        return self.lin(f"{name}.o", out)

    def res_block(self, name, x, temb):
        h = self.conv(f"{name}.c1", F.silu(self.gn(f"{name}.n1", x)))
        h = h + self.lin(f"{name}.t", F.silu(temb))[:, :, None, None]
        h = self.conv(f"{name}.c2", F.silu(self.gn(f"{name}.n2", h)))
        if f"{name}.skip.w" in self.params:  # 1x1 conv with the dense layer's weights
            w = self.params[f"{name}.skip.w"]
            x = F.conv2d(x, w[:, :, None, None], self.params[f"{name}.skip.b"])
        return h + x

    def image_attn(self, name, x, kv, bias):
        b, c, hh, ww = x.shape
        q = self.gn(f"{name}.n", x).flatten(2).transpose(1, 2)
        out = self.attention(name, q, q if kv is None else kv, None if kv is None else bias)
        return x + out.transpose(1, 2).reshape(b, c, hh, ww)

    def encode_text(self, tokens, mask, bias):
        a = self.a
        length = tokens.shape[1]
        h = F.embedding(tokens, self.params["text.tok"]) + self.params["text.pos"][:length]
        for l in range(a["textLayers"]):
            n1 = self.ln(f"text.l{l}.n1", h)
            h = h + self.attention(f"text.l{l}.attn", n1, n1, bias)
            n2 = self.ln(f"text.l{l}.n2", h)
            h = h + self.lin(f"text.l{l}.fc2", F.silu(self.lin(f"text.l{l}.fc1", n2)))
        return self.ln("text.out", h)

    def timestep_embedding(self, t, dim, max_period=10000):
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
        args = t.to(torch.float64)[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], 1).to(torch.float32)

    def forward(self, x, t, tokens, mask):
        """x: [B, C, H, W]; t: [B]; tokens: [B, L] int64; mask: [B, L] float."""
        a = self.a
        assert self.patch() == 1, "the benchmark mirrors the default config (patchSize 1)"
        bias = ((1 - mask) * -1e9)[:, None, None, :]
        ctx = self.encode_text(tokens, mask, bias)
        temb = self.lin("time.fc2", F.silu(self.lin("time.fc1", self.timestep_embedding(t, a["baseChannels"]))))
        if a.get("pooledText", False):
            m = mask[:, :, None]
            temb = temb + self.lin("text.pool", (ctx * m).sum(1) / m.sum(1).clamp(min=1))
        L = self.levels()
        h = self.conv("in", x)
        skips = [h]
        for lv in L:
            for r in range(a["numResBlocks"]):
                h = self.res_block(f"down{lv['i']}.res{r}", h, temb)
                if lv["res"] in a["attentionResolutions"]:
                    h = self.image_attn(f"down{lv['i']}.xattn{r}", h, ctx, bias)
                skips.append(h)
            if lv["i"] < len(L) - 1:
                h = F.avg_pool2d(h, 2)
                skips.append(h)
        h = self.res_block("mid.res0", h, temb)
        h = self.image_attn("mid.sattn", h, None, None)
        h = self.image_attn("mid.xattn", h, ctx, bias)
        h = self.res_block("mid.res1", h, temb)
        for lv in reversed(L):
            for r in range(a["numResBlocks"] + 1):
                h = self.res_block(f"up{lv['i']}.res{r}", torch.cat([h, skips.pop()], 1), temb)
                if lv["res"] in a["attentionResolutions"]:
                    h = self.image_attn(f"up{lv['i']}.xattn{r}", h, ctx, bias)
            if lv["i"] > 0:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
        return self.conv("out", F.silu(self.gn("out.n", h)))


class ReferenceNet:
    """bench/unet.ts's reference net: 4 convs 3-32-32-32-3 (3x3, ReLU between)."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.specs = [*conv_spec("c0", 3, 3, 32), *conv_spec("c1", 3, 32, 32), *conv_spec("c2", 3, 32, 32), *conv_spec("c3", 3, 32, 3)]
        self.params = {name: torch.nn.Parameter(torch.zeros(shape) if init == "zeros" else torch.randn(shape, generator=g) * init[1])
                       for name, shape, init, _ in self.specs}

    def ts_shapes(self):
        return [[name, to_ts_shape(shape, layout)] for name, shape, _, layout in self.specs]

    def forward(self, x):
        for i in range(4):
            x = F.conv2d(x, self.params[f"c{i}.w"], self.params[f"c{i}.b"], padding=1)
            if i < 3:
                x = F.relu(x)
        return x
