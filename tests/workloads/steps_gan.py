"""A GAN's loop: two models, two optimizers stepped each iteration (the discriminator's, then the
generator's), the discriminator run twice before its backward, and one no_grad sample of the
generator every 5 iterations for monitoring. ``--leak`` keeps every monitoring sample.

Known answers: ``--steps`` steps (one an iteration, not two), one epoch, no evaluation.
"""

import argparse

import torch
from torch import nn
from torch.nn import functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--leak", action="store_true")
args = ap.parse_args()

torch.manual_seed(7)
G = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
D = nn.Sequential(nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
opt_d = torch.optim.Adam(D.parameters(), lr=2e-4)
opt_g = torch.optim.Adam(G.parameters(), lr=2e-4)
fixed = torch.randn(16, 4)
samples = []
for i in range(args.steps):
    real = torch.randn(16, 8)
    fake = G(torch.randn(16, 4))
    d_real, d_fake = D(real), D(fake.detach())
    loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
              + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
    opt_d.zero_grad()
    loss_d.backward()
    opt_d.step()
    g_out = D(fake)
    loss_g = F.binary_cross_entropy_with_logits(g_out, torch.ones_like(g_out))
    opt_g.zero_grad()
    loss_g.backward()
    opt_g.step()
    if i % 5 == 4:
        with torch.no_grad():
            sample = G(fixed)
        if args.leak:
            samples.append(sample)
print("steps_gan done", len(samples))
