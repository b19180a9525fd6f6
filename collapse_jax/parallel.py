"""Data parallelism: one 1-D mesh over every device of every host, batches split on 'data'.

Parameters are replicated and the batch is sharded; `jax.jit` then inserts the cross-device
gradient mean itself. On a pod slice call `initialize()` first; each process then feeds only its
own slice of every global batch.
"""
from __future__ import annotations

import os

import numpy as np
import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from collapse_jax import files


def initialize(timeout_s: int = 300, heartbeat_s: int = 60):
    """Starts multi-process JAX. On a TPU pod slice, under SLURM or Open MPI, JAX finds the
    coordinator itself. Elsewhere (several processes on one machine, or hosts you start by hand)
    set JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID
    in each process's environment. A process that does not show up within `timeout_s`, or stops
    answering for `heartbeat_s`, ends the others with an error instead of a hang."""
    env, kw = os.environ, {}
    if env.get('JAX_COORDINATOR_ADDRESS'):
        for name in ('JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
            if not env.get(name, '').isdigit():
                raise ValueError(f'{name}={env.get(name)!r}: with JAX_COORDINATOR_ADDRESS set, '
                                 'JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers >= 0')
        kw = dict(coordinator_address=env['JAX_COORDINATOR_ADDRESS'],
                  num_processes=int(env['JAX_NUM_PROCESSES']),
                  process_id=int(env['JAX_PROCESS_ID']))
    try:
        jax.distributed.initialize(initialization_timeout=timeout_s,
                                   heartbeat_timeout_seconds=heartbeat_s, **kw)
    except Exception as e:  # noqa: BLE001 - re-raised with the context a user needs
        raise RuntimeError(f'jax.distributed.initialize failed ({e}); check that every host runs '
                           'the same command and can reach the coordinator') from e


def local_devices(devices=None) -> tuple:
    """`devices`, or this process's own devices: where scoring, selection and the feature
    networks run (each process on its own; nothing crosses hosts)."""
    return tuple(jax.local_devices() if devices is None else devices)


ROWS = 'rows'  # the axis the scorer's queries and the selection's candidates are split on


def local_mesh(devices=None):
    """A 1-D ROWS mesh over `devices` (default: this process's own): scoring and selection."""
    return jax.sharding.Mesh(np.asarray(local_devices(devices)), (ROWS,))


def make_mesh(devices=None):
    """A 1-D 'data' mesh over `devices` (default: every device of every host)."""
    if devices is None:
        return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(AxisType.Auto,))
    return jax.sharding.Mesh(np.asarray(devices), ('data',), axis_types=(AxisType.Auto,))


def data_sharding(mesh):
    return NamedSharding(mesh, P('data'))


def replicated(mesh):
    return NamedSharding(mesh, P())


def local_slice(global_batch: int) -> slice:
    """Rows of a global batch that this process feeds."""
    per = global_batch // jax.process_count()
    return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def shard_batch(mesh, global_rows: np.ndarray):
    """A global host array (identical on every process) -> a batch sharded over 'data'.
    Each process hands over only its own rows."""
    local = global_rows[local_slice(global_rows.shape[0])]
    return jax.make_array_from_process_local_data(data_sharding(mesh), local,
                                                  global_rows.shape)


def replicate(mesh, x: np.ndarray):
    """A host array (identical on every process) -> a copy on every device of the mesh."""
    return jax.make_array_from_callback(x.shape, replicated(mesh), lambda index: x[index])


def check_divisible(batch: int, field: str):
    n = jax.device_count()
    if batch % n:
        raise ValueError(f'{field}={batch} must be divisible by the device count ({n})')


def compilation_cache(cfg, workdir: str) -> str:
    """XLA's persistent cache directory ('' = off). 'auto': ~/.cache/collapse_jax/xla on one
    process; with config.distributed, <workdir>/xla_cache, a path every host of a slice reads
    (JAX writes the cache from process 0 only, so a per-host default would serve only it)."""
    if cfg.compilation_cache != 'auto':
        return os.path.expanduser(cfg.compilation_cache)
    if cfg.distributed:
        return os.path.join(files.absolute(workdir), 'xla_cache')
    return os.path.expanduser('~/.cache/collapse_jax/xla')


def any_process(flag: bool) -> bool:
    """Whether `flag` is set in any process: one small all-gather, so that every process takes
    the same decision at the same point (a preemption notice may reach one host first)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils
    return bool(np.max(multihost_utils.process_allgather(np.asarray(flag, np.int32))))
