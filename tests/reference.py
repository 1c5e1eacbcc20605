"""Slow, obvious float64 references for every loss — written from method.md, not the library.

CSD is the explicit O(V²) double sum with the weight matrix; baselines are the textbook formulas
in probability space. Inputs (..., V) of any dtype; outputs float64 (...). Weights that depend on
the student are detached (stop-gradient), so autograd through these gives the reference gradient.
"""
import torch


def _probs(logits, temperature=1.0):
    """softmax(logits / τ) in float64 (..., V)."""
    x = logits.double() / temperature
    return torch.exp(x - torch.logsumexp(x, dim=-1, keepdim=True))


def _weight(code, s, t, temperature, mix_alpha):
    """(…, V) float64 weight vector for a CSD weight code; S is detached."""
    vocab = s.shape[-1]
    if code == "S":
        return _probs(s.detach(), temperature)
    if code == "T":
        return _probs(t, temperature)
    if code == "U":
        return torch.full_like(s, 1.0 / vocab)
    if code == "M":
        student_probs = _probs(s.detach(), temperature)
        return mix_alpha * _probs(t, temperature) + (1 - mix_alpha) * student_probs
    raise AssertionError(code)


def csd_pairwise(student, teacher, weighting="SS", temperature=1.0, mix_alpha=0.15):
    """½ Σ_y Σ_x w1(y) w2(x) (r[x] − r[y])² by the explicit double sum (..., V, V)."""
    s, t = student.double(), teacher.detach().double()
    r = s - t
    w1 = _weight(weighting[0], s, t, temperature, mix_alpha)
    w2 = _weight(weighting[1], s, t, temperature, mix_alpha)
    pair_weight = w1.unsqueeze(-1) * w2.unsqueeze(-2)  # [..., y, x]
    diff = r.unsqueeze(-2) - r.unsqueeze(-1)  # [..., y, x] = r[x] − r[y]
    return 0.5 * (pair_weight * diff**2).sum(dim=(-1, -2))


def csd_grad_formula(student, teacher, weighting="SS", temperature=1.0, mix_alpha=0.15):
    """∂L/∂s_k = w2_k (r_k − E_w1 r) + w1_k (r_k − E_w2 r), float64 (..., V)."""
    s, t = student.double(), teacher.double()
    r = s - t
    w1 = _weight(weighting[0], s, t, temperature, mix_alpha)
    w2 = _weight(weighting[1], s, t, temperature, mix_alpha)
    e1 = (w1 * r).sum(-1, keepdim=True)
    e2 = (w2 * r).sum(-1, keepdim=True)
    return w2 * (r - e1) + w1 * (r - e2)


def _pq(student, teacher, temperature=1.0):
    return _probs(teacher.detach(), temperature), _probs(student, temperature)


def kl(a, b):
    """Σ a log(a / b) in float64 (0·log 0 = 0)."""
    return torch.where(a > 0, a * (torch.log(a) - torch.log(b)), torch.zeros_like(a)).sum(-1)


def forward_kl(s, t, temperature=1.0):
    p, q = _pq(s, t, temperature)
    return kl(p, q)


def reverse_kl(s, t, temperature=1.0):
    p, q = _pq(s, t, temperature)
    return kl(q, p)


def skew_forward_kl(s, t, lam=0.1, temperature=1.0):
    p, q = _pq(s, t, temperature)
    return kl(p, lam * p + (1 - lam) * q)


def skew_reverse_kl(s, t, lam=0.1, temperature=1.0):
    p, q = _pq(s, t, temperature)
    return kl(q, lam * q + (1 - lam) * p)


def generalized_jsd(s, t, beta=0.5, temperature=1.0):
    p, q = _pq(s, t, temperature)
    if beta == 0:
        return kl(p, q)
    if beta == 1:
        return kl(q, p)
    m = beta * p + (1 - beta) * q
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


def tvd(s, t, temperature=1.0):
    p, q = _pq(s, t, temperature)
    return 0.5 * (p - q).abs().sum(-1)


def symmetric_kl(s, t, lam=0.9, temperature=1.0):
    p, q = _pq(s, t, temperature)
    return (1 - lam) * kl(p, q) + lam * kl(q, p)


def jeffreys(s, t, temperature=1.0):
    p, q = _pq(s, t, temperature)
    return kl(p, q) + kl(q, p)


def ab_divergence(s, t, alpha=0.2, beta=0.7, temperature=1.0):
    """Cichocki–Cruces–Amari AB-divergence D(p ‖ q) with its four limit cases."""
    p, q = _pq(s, t, temperature)
    a, b = alpha, beta
    if a == 0 and b == 0:
        return 0.5 * ((torch.log(p) - torch.log(q)) ** 2).sum(-1)
    if a + b == 0:
        ratio = (p / q) ** a
        return (ratio - 1 - torch.log(ratio)).sum(-1) / a**2
    if b == 0:
        return (p**a * torch.log(p**a / q**a) - p**a + q**a).sum(-1) / a**2
    if a == 0:
        return (q**b * torch.log(q**b / p**b) - q**b + p**b).sum(-1) / b**2
    inner = p**a * q**b - a / (a + b) * p ** (a + b) - b / (a + b) * q ** (a + b)
    return -inner.sum(-1) / (a * b)


def _normalized(x, mode):
    if mode == "none":
        return x
    if mode == "mean":
        return x - x.mean(-1, keepdim=True)
    if mode == "min":
        return x - x.min(-1, keepdim=True).values
    if mode == "max":
        return x - x.max(-1, keepdim=True).values
    if mode == "std":
        return (x - x.mean(-1, keepdim=True)) / x.std(-1, unbiased=False, keepdim=True)
    lo, hi = x.min(-1, keepdim=True).values, x.max(-1, keepdim=True).values
    return (x - lo) / (hi - lo)


def dld(s, t, weight="U", normalize="none", temperature=1.0):
    sd, td = s.double(), t.detach().double()
    w = {"U": torch.full_like(sd, 1.0 / sd.shape[-1]), "S": _probs(sd.detach(), temperature),
         "T": _probs(td, temperature)}[weight]
    return (w * (_normalized(sd, normalize) - _normalized(td, normalize)) ** 2).sum(-1)


def cross_entropy(logits, labels, ignore_index=-100):
    logp = torch.log(_probs(logits))
    safe = labels.clamp_min(0)
    nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(labels == ignore_index, torch.zeros_like(nll), nll)


BASELINES = {
    "fkl": forward_kl, "rkl": reverse_kl, "skl": skew_forward_kl, "srkl": skew_reverse_kl,
    "jsd": generalized_jsd, "tvd": tvd, "sym_kl": symmetric_kl, "jeffreys": jeffreys,
    "ab": ab_divergence, "dld": dld,
}
