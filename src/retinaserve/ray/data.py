"""``retinaserve batch --ray``: bulk detection on Ray Data, with the model replicas sized by the memory planner.

The pipeline: the paths still to do (``from_items``) -> decode tasks (``map_batches``, parallel) -> a fixed pool of
:class:`DetectorActor` (each builds the Detector once, as ``retinaserve detect`` does, and runs a batch per call) ->
the driver, which iterates the finished rows and writes them with the same writer as the in-process mode. With
``--reconstruct`` each actor also builds the Reconstructor once, on its own Detector (:mod:`retinaserve.bulk.meshes`),
and the plan adds the 3D model's files to a replica's footprint.

How images travel: a decode task returns each image's pixels as a uint8 array of its own shape. Ray Data 2.60 turns
a column of differently shaped arrays into its variable-shaped tensor type (equal shapes into a fixed-shaped one)
and gives it back to the actor as a sequence of (h, w, 3) arrays, zero-copy from the object store, so nothing is
encoded twice. A file that fails to decode travels as an empty (0, 0, 3) array with its error. JPEGs are decoded at
the scale the network needs (``decode="fast"``, as the Detector does), so what travels is small. Results come back
as one JSON string per image (the row the in-process mode writes), which spares Arrow from inferring a type for a
list of faces that is often empty. Where the plan leaves no CPU beside the replicas (a 2-CPU node), decode tasks
would never be scheduled, so the actors decode their own batch instead.

The driver resolves ``--backend auto`` once (by the measurement the Detector itself uses, cached per machine) so that
the footprint the plan is sized from is that of the backend the actors run; on CUDA it measures in a task on a GPU.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np

from ..bulk.meshes import MeshOptions, mesh_model_mb
from ..bulk.runner import DEFAULT_BATCH, Decoded, DetectorOptions, ImageDecoder, decode_path, detect_rows
from ..images import ReducedImage
from .sizing import ReplicaPlan, measure_replica, plan_replicas

__all__ = ["DetectorActor", "decode_batch", "decode_cpus", "plan_for_cluster", "ray_session", "run_on_ray"]

log = logging.getLogger(__name__)

Row = dict[str, Any]

MIN_DECODE_CPUS = 0.25
"""Decode tasks run beside the replicas only where the plan leaves at least this much CPU for them."""


@contextmanager
def ray_session(*, verbose: bool = False) -> Iterator[None]:
    """Ray for one run: the driver as it is when already initialised; else ``ray.init()`` (``RAY_ADDRESS``, or a
    cluster ``ray start`` began on this machine, else a new local one), shut down at the end. Ray Data's own
    progress bars and INFO lines are off unless ``verbose`` (the command shows its own progress)."""
    import ray.data  # also binds `ray`

    context = ray.data.DataContext.get_current()
    progress_bars = context.enable_progress_bars
    console = [h for h in logging.getLogger("ray.data").handlers if not isinstance(h, logging.FileHandler)]
    levels = [h.level for h in console]
    if not verbose:
        context.enable_progress_bars = False
        for handler in console:
            handler.setLevel(logging.ERROR)
    started = False
    try:
        if not ray.is_initialized():
            try:
                ray.init(log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.WARNING)
            except (ConnectionError, RuntimeError) as exc:  # one line, not Ray's traceback
                where = os.environ.get("RAY_ADDRESS") or "a local cluster"
                raise RuntimeError(f"cannot start or reach Ray ({where}): {str(exc).splitlines()[0]}") from None
            started = True
        yield
    finally:
        if started:
            ray.shutdown()
        context.enable_progress_bars = progress_bars
        for handler, level in zip(console, levels):
            handler.setLevel(level)


def _cluster_device(options: DetectorOptions, gpus: float) -> str:
    """``cpu`` or ``cuda`` for the actors (each sees its own GPUs as cuda:0); ``auto`` is cuda where the cluster
    has GPUs."""
    device = options.device
    if device == "auto":
        return "cuda" if gpus > 0 else "cpu"
    if device.startswith("cuda"):
        if gpus <= 0:
            raise ValueError(f"--device {device}, but the Ray cluster has no GPUs")
        return "cuda"
    return "cpu"


def plan_for_cluster(
    options: DetectorOptions, *, replicas: int | None = None, meshes: MeshOptions | None = None
) -> tuple[DetectorOptions, ReplicaPlan]:
    """The options the actors build their Detector from (device, ``auto`` backend and batch size resolved) and the
    plan: one replica's footprint at that batch (else :data:`DEFAULT_BATCH`), measured here (on CUDA: in a task on a
    GPU), over the cluster's CPUs, GPUs and memory (a CPU node's capacity is Ray's ``memory`` resource, what the
    actors' ``memory`` is reserved from). With ``meshes``, the footprint also holds the 3D model: its files' size
    (resolved, and provisioned where allowed, here), twice over for the arrays built from them; a rough figure, as
    these models are a few MiB beside the detector's activations."""
    import ray

    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 0.0))
    gpus = float(resources.get("GPU", 0.0))
    options = replace(options, device=_cluster_device(options, gpus))
    measured = measure_replica(
        options.model,
        backend=options.backend,
        precision=options.precision,
        device=options.device,
        weights=options.weights,
        download=options.download,
    )
    options = replace(options, backend=measured.backend, batch_size=options.batch_size or measured.batch)
    footprint = measured.footprint
    if options.device == "cuda":
        capacity_mb = measured.card_mb
    else:
        capacity_mb = float(resources.get("memory", 0.0)) / float(1 << 20) or None
    mesh_mb = 0.0
    if meshes is not None:
        mesh_mb = 2.0 * mesh_model_mb(meshes.model, download=meshes.download)
        footprint = replace(footprint, weights_mb=footprint.weights_mb + mesh_mb, fixed_mb=footprint.fixed_mb + mesh_mb)
    batch = options.batch_size or DEFAULT_BATCH  # the Detector's own default where nothing else says
    options = replace(options, batch_size=batch)
    plan = plan_replicas(
        footprint,
        batch=batch,
        replicas=replicas,
        cpus=cpus,
        gpus=gpus,
        capacity_mb=capacity_mb,
        reserve_cpus=1.0 if cpus > 2 else 0.0,
    )
    if meshes is not None:
        plan = replace(plan, reason=f"{plan.reason} (with {meshes.model}: {mesh_mb:.0f} MiB of it)")
    return options, plan


def decode_batch(batch: dict[str, np.ndarray], decoder: ImageDecoder) -> dict[str, np.ndarray]:
    """A Ray Data batch of ``path`` -> the decoded images: ``pixels`` (one (h, w, 3) uint8 array each, (0, 0, 3)
    where decoding failed), the full ``height``/``width``, the DCT ``reduction``, ``decode_ms`` and ``error``
    ("" when none)."""
    decoded = [decode_path(decoder, str(path)) for path in batch["path"]]
    pixels = np.empty(len(decoded), dtype=object)
    for index, item in enumerate(decoded):
        pixels[index] = item.image.pixels if item.image is not None else np.zeros((0, 0, 3), np.uint8)
    return {
        "path": np.array([item.path for item in decoded], dtype=object),
        "pixels": pixels,
        "height": np.array([item.image.height if item.image else 0 for item in decoded], dtype=np.int64),
        "width": np.array([item.image.width if item.image else 0 for item in decoded], dtype=np.int64),
        "reduction": np.array([item.image.reduction if item.image else 1 for item in decoded], dtype=np.int64),
        "decode_ms": np.array([item.decode_ms for item in decoded], dtype=np.float64),
        "error": np.array([item.error or "" for item in decoded], dtype=object),
    }


def _decoded_from(batch: dict[str, np.ndarray]) -> list[Decoded]:
    """What :func:`decode_batch` returned, as :class:`Decoded` images again."""
    out = []
    for i, path in enumerate(batch["path"]):
        error = str(batch["error"][i])
        image = None
        if not error:
            pixels = np.asarray(batch["pixels"][i])
            height, width, reduction = int(batch["height"][i]), int(batch["width"][i]), int(batch["reduction"][i])
            image = ReducedImage(pixels, height, width, reduction)
        out.append(Decoded(str(path), image, float(batch["decode_ms"][i]), error or None))
    return out


class DetectorActor:
    """One model replica of the Ray Data pipeline: builds the Detector once (and with ``meshes`` the Reconstructor
    on it), then turns each batch into rows (``row``: one JSON string per image). With ``decode_here`` it decodes
    the paths itself."""

    def __init__(
        self,
        options: DetectorOptions,
        decoder: ImageDecoder,
        decode_here: bool = False,
        meshes: MeshOptions | None = None,
    ) -> None:
        self.detector = options.build()
        self.meshes = meshes.build(self.detector, options.device) if meshes is not None else None
        if ImageDecoder.of(self.detector) != decoder:  # the decode tasks must load exactly as the Detector would
            raise RuntimeError(f"the decode stage ({decoder}) differs from the Detector's ({self.detector!r})")
        self.decoder = decoder
        self.decode_here = decode_here

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.decode_here:
            decoded = [decode_path(self.decoder, str(path)) for path in batch["path"]]
        else:
            decoded = _decoded_from(batch)
        rows = detect_rows(self.detector, decoded, self.meshes)
        return {"row": np.array([json.dumps(row) for row in rows], dtype=object)}


def decode_cpus(plan: ReplicaPlan, cpus: float) -> float | None:
    """CPUs per decode task: up to one, from what the replicas leave of the cluster's ``cpus``; None where they
    leave less than :data:`MIN_DECODE_CPUS` (tasks could never be scheduled: the replicas decode instead)."""
    spare = cpus - plan.replicas * plan.num_cpus
    return min(1.0, spare) if spare >= MIN_DECODE_CPUS else None


def run_on_ray(
    paths: Sequence[str],
    options: DetectorOptions,
    plan: ReplicaPlan,
    on_row: Callable[[Row], None],
    *,
    rows_per_call: int = DEFAULT_BATCH,
    meshes: MeshOptions | None = None,
) -> float | None:
    """Detect faces in ``paths`` on the connected Ray cluster with ``plan.replicas`` actors of ``plan``'s size,
    ``rows_per_call`` images per actor call (run by the Detector in network calls of its own batch size), calling
    ``on_row`` with each image's row as the driver receives it (in no particular order). Returns the CPUs of each
    decode task (None: the replicas decoded, see :func:`decode_cpus`). ``meshes``: the actors also reconstruct."""
    import ray.data  # also binds `ray`

    decoder = ImageDecoder.for_model(options.model, options.decode)
    decode = decode_cpus(plan, float(ray.cluster_resources().get("CPU", 0.0)))
    log.info(
        "ray data: %d images, %d replicas x %s, decoding %s",
        len(paths),
        plan.replicas,
        plan.actor_options(),
        f"in tasks of {decode:g} CPU" if decode else "in the replicas (no CPU left beside them)",
    )
    # the driver's settings (weights folders, a forced engine) reach the actors on any node, as a job's would
    settings = {name: value for name, value in os.environ.items() if name.startswith("RETINASERVE_")}
    dataset: Any = ray.data.from_items([{"path": path} for path in paths])
    if decode:
        # its resources differ from the actors', so Ray Data keeps it a separate stage of parallel tasks
        dataset = dataset.map_batches(
            decode_batch, fn_kwargs={"decoder": decoder}, batch_size=rows_per_call, num_cpus=decode
        )
    dataset = dataset.map_batches(
        DetectorActor,
        fn_constructor_kwargs={
            "options": options,
            "decoder": decoder,
            "decode_here": decode is None,
            "meshes": meshes,
        },
        batch_size=rows_per_call,
        compute=ray.data.ActorPoolStrategy(size=plan.replicas),
        runtime_env={"env_vars": settings} if settings else None,
        **plan.actor_options(),
    )
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for text in batch["row"]:
            on_row(json.loads(text))
    return decode
