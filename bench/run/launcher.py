"""The command line that starts a worker: a plain interpreter, or torchrun for ddp, fsdp and the
model-parallel modes.

Multi-node runs use torchrun's static rendezvous (master address, port, node rank), so global
rank 0, the rank that writes the record, is on node 0, whose parent records it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from lmbench.errors import UsageError
from lmbench.plan.config import Config
from lmbench.plan.layout import DISTRIBUTED


@dataclass(frozen=True, kw_only=True)
class Launch:
    """How this node takes part in distributed jobs."""

    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    """HOST:PORT of node 0, where torchrun's store listens (multi-node only)."""

    def __post_init__(self) -> None:
        if self.nnodes < 1:
            raise UsageError(f"--nnodes {self.nnodes}: must be at least 1")
        if not 0 <= self.node_rank < self.nnodes:
            raise UsageError(f"--node-rank {self.node_rank}: must be in 0..{self.nnodes - 1}")
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise UsageError(f"--nnodes {self.nnodes} needs --rdzv-endpoint HOST:PORT, node 0's address and a free "
                             "port")
        if self.rdzv_endpoint is not None:
            host, _, port = self.rdzv_endpoint.rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise UsageError(f"--rdzv-endpoint {self.rdzv_endpoint!r}: expected HOST:PORT of node 0, with PORT in "
                                 "1..65535")

    @property
    def records(self) -> bool:
        """Only node 0 writes results; the others just take part in distributed jobs."""
        return self.node_rank == 0

    def runs(self, config: Config) -> bool:
        """Node 0 runs everything; other nodes only the distributed jobs they are a part of."""
        return self.records or config.parallel in DISTRIBUTED


def worker_command(config: Config, job_path: Path, result_path: Path, launch: Launch) -> list[str]:
    worker = ["-m", "lmbench.run.worker", str(job_path), str(result_path)]
    if config.parallel not in DISTRIBUTED:
        return [sys.executable, *worker]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(config.nproc), "--max-restarts", "0"]
    if launch.nnodes == 1:
        cmd.append("--standalone")
    else:
        host, _, port = launch.rdzv_endpoint.rpartition(":")
        cmd += ["--nnodes", str(launch.nnodes), "--node-rank", str(launch.node_rank), "--master-addr", host,
                "--master-port", port]
    return cmd + worker
