"""The shape of PyTorch's word-language-model example: batches sliced from one tensor of tokens,
parameters updated by hand (no optimizer object), a validation under no_grad each epoch, and a
test of the best model (a copy) at the end. ``--leak`` keeps every step's hidden state with
its graph.

Known answers: ``--epochs`` epochs of ``--steps`` steps (one backward each), one validation
each, one test after the last epoch.
"""

import argparse
import copy

import torch
from torch import nn

ap = argparse.ArgumentParser()
ap.add_argument("--epochs", type=int, default=2)
ap.add_argument("--steps", type=int, default=25)
ap.add_argument("--leak", action="store_true")
args = ap.parse_args()

VOCAB, BPTT, BSZ, LR = 50, 8, 4, 2.0
torch.manual_seed(3)


def batchify(data: torch.Tensor, bsz: int) -> torch.Tensor:
    n = data.size(0) // bsz
    return data[:n * bsz].view(bsz, -1).t().contiguous()


train_data = batchify(torch.randint(0, VOCAB, (args.steps * BPTT * BSZ + BSZ,)), BSZ)
val_data = batchify(torch.randint(0, VOCAB, (5 * BPTT * BSZ + BSZ,)), BSZ)
test_data = batchify(torch.randint(0, VOCAB, (3 * BPTT * BSZ + BSZ,)), BSZ)


class RNNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Embedding(VOCAB, 16)
        self.rnn = nn.LSTM(16, 24)
        self.decoder = nn.Linear(24, VOCAB)

    def forward(self, x: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor]) -> tuple[
            torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        out, hidden = self.rnn(self.encoder(x), hidden)
        return self.decoder(out).view(-1, VOCAB), hidden

    def init_hidden(self, bsz: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(1, bsz, 24), torch.zeros(1, bsz, 24)


def get_batch(source: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    seq_len = min(BPTT, len(source) - 1 - i)
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len].reshape(-1)


def repackage(h: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return h[0].detach(), h[1].detach()


model = RNNModel()
criterion = nn.NLLLoss()
kept = []


def evaluate(net: RNNModel, source: torch.Tensor) -> float:
    net.eval()
    total = 0.0
    hidden = net.init_hidden(BSZ)
    with torch.no_grad():
        for i in range(0, source.size(0) - 1, BPTT):
            data, targets = get_batch(source, i)
            output, hidden = net(data, hidden)
            total += len(data) * criterion(torch.log_softmax(output, 1), targets).item()
    return total / (len(source) - 1)


def train() -> None:
    model.train()
    hidden = model.init_hidden(BSZ)
    for batch, i in enumerate(range(0, train_data.size(0) - 1, BPTT)):
        data, targets = get_batch(train_data, i)
        hidden = repackage(hidden)
        model.zero_grad()
        output, hidden = model(data, hidden)
        loss = criterion(torch.log_softmax(output, 1), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-LR)
        if args.leak:
            kept.append(output)


best_val, best = None, model
for epoch in range(1, args.epochs + 1):
    train()
    val_loss = evaluate(model, val_data)
    if best_val is None or val_loss < best_val:
        best_val, best = val_loss, copy.deepcopy(model)
test_loss = evaluate(best, test_data)
print("steps_manual done", len(kept))
