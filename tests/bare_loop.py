"""A bare hand-written training loop in its own process, the yardstick for lmbench's worker.

    python bare_loop.py CONFIG_JSON    -> prints {"step_times_s": [...]} on stdout

It builds the same model with the same seed and data as lmbench (so the losses match), then runs
exactly what a user writes: forward, backward, optimizer step, zero_grad, timed with perf_counter.
Nothing of lmbench's run machinery is imported.
"""

import json
import sys
import time

import torch

from lmbench.models.registry import MODELS, build_model
from lmbench.plan.config import Config
from lmbench.run.data import make_batches


def main() -> None:
    config = Config.from_mapping(json.loads(sys.argv[1]))
    spec = MODELS[config.model]
    torch.manual_seed(config.seed)
    model = build_model(spec, attention=config.attention).train()
    fused = config.optimizer == "adamw-fused"
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, fused=fused, foreach=not fused)
    batches = make_batches(spec=spec, batch_size=config.batch_size, seq_len=config.seq_len, data=config.data,
                           tokenizer=config.tokenizer, seed=config.seed, count=16, device=torch.device("cpu"))
    times, losses = [], []
    for i in range(config.warmup + config.steps):
        batch = batches[i % len(batches)]
        start = time.perf_counter()
        loss = model(input_ids=batch.input_ids, labels=batch.labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= config.warmup:
            times.append(time.perf_counter() - start)
            losses.append(loss.item())
    print(json.dumps({"step_times_s": times, "losses": losses}))


if __name__ == "__main__":
    main()
