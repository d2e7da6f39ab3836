"""The library's front door: segment / finetune / predict on plain arrays.

The CLI and the Slicer module both call these; neither re-implements a step. Arrays are (z, y, x) as SimpleITK
and Slicer return them; ``spacing`` is (x, y, z) in mm. ``progress`` receives event dicts (see
:mod:`ContrastiveSegLib.progress`); setting the ``cancel`` event (a ``threading.Event``) stops the run with
:class:`~ContrastiveSegLib.errors.Cancelled` at the next step.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ContrastiveSegLib.data.augment import BatchAugmenter
from ContrastiveSegLib.data.intensity import check_finite, foreground_window, normalise_intensity
from ContrastiveSegLib.data.sampler import AnnotatedSliceSampler, UnannotatedSliceSampler
from ContrastiveSegLib.data.slices import InputSpec, SliceStack
from ContrastiveSegLib.device import resolve_device
from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.inference.postprocess import keep_annotated_components, paste_annotations
from ContrastiveSegLib.inference.predict import predict_volume
from ContrastiveSegLib.inference.shape_prior import (PSEUDO_SLICES, build_shape_prior, evenly_spread,
                                                     prior_pseudo_labels)
from ContrastiveSegLib.io.annotations import IGNORE, SparseAnnotation, decode_annotation
from ContrastiveSegLib.model import TrainedModel, load_encoder_into
from ContrastiveSegLib.networks import NetworkConfig, build_network
from ContrastiveSegLib.options import (ADAPT_STEPS, CONSISTENCY_DECODERS, DEFAULT_CONSISTENCY, DEFAULT_DEVICE,
                                       DEFAULT_PRESET, check_consistency)
from ContrastiveSegLib.presets import preset_config
from ContrastiveSegLib.progress import ProgressCallback, emit
from ContrastiveSegLib.training.finetune import finetune as run_finetune
from ContrastiveSegLib.zoo.registry import default_encoder, resolve_encoder

DEFAULT_SPEC = InputSpec(context=1, coordinates=True)
PSEUDO_CONFIDENCE = 0.9  # fused probability a voxel needs to become a self-training target
SELF_TRAIN_LR = 0.3  # self-training learning rate as a fraction of the preset's


@dataclass
class SegmentResult:
    """What :func:`segment` and :func:`predict` return.

    Attributes:
        labels: (z, y, x) label map with the user's label values.
        probabilities: (C, z, y, x) float32 class probabilities (background first), or None.
        model: the fine-tuned model (None when nothing was trained).
        axis: the annotation axis used.
        message: a note for the user (e.g. "every slice is annotated"), or None.
        seconds: wall time per stage.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    model: TrainedModel | None = None
    axis: int | None = None
    message: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def check_image(image: np.ndarray) -> None:
    """InputError unless ``image`` is a finite 3D numeric array."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3:
        raise InputError(f"image must be a 3D volume, got {image.ndim}D of shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
        raise InputError(f"image must be numeric, got dtype {image.dtype}")
    check_finite(image)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _input_spec(image: np.ndarray, annotation: SparseAnnotation, init_model: TrainedModel | None) -> InputSpec:
    """A refinement keeps its model's input spec; a new model windows intensities around the annotated
    structures (see :mod:`ContrastiveSegLib.data.intensity`)."""
    if init_model is not None:
        return init_model.spec
    foreground = (annotation.target != 0) & (annotation.target != 255)
    return dataclasses.replace(DEFAULT_SPEC, window=foreground_window(image, foreground))


def _prepare(image: np.ndarray, labels: np.ndarray, axis: int | None,
             label_values: tuple[int, ...] | None = None) -> SparseAnnotation:
    check_image(image)
    if not isinstance(labels, np.ndarray) or labels.shape != image.shape:
        shape = getattr(labels, "shape", None)
        raise InputError(f"labels of shape {shape} do not match the image's shape {image.shape}")
    return decode_annotation(labels, axis, label_values)


def finetune(image: np.ndarray, labels: np.ndarray, spacing=(1.0, 1.0, 1.0), *, axis: int | None = None,
             preset: str = DEFAULT_PRESET, encoder: str | None = None, init_model: TrainedModel | None = None,
             device: str = DEFAULT_DEVICE, seed: int = 0, steps: int | None = None, batch_size: int | None = None,
             adapt: str | None = None, adapt_steps: int = ADAPT_STEPS, consistency: str = DEFAULT_CONSISTENCY,
             prior_labels: bool = False, progress: ProgressCallback = None, cancel=None,
             _annotation: SparseAnnotation | None = None, _stack: SliceStack | None = None) -> TrainedModel:
    """Fine-tune a 2.5D U-Net on the annotated slices of ``labels``.

    Args:
        image: (z, y, x) intensities (any units: CT HU or MR).
        labels: (z, y, x) sparse label map (see :mod:`ContrastiveSegLib.io.annotations`).
        encoder: a shipped encoder name, a .safetensors path, "none" for random initialisation, or None for the
            shipped default (:func:`~ContrastiveSegLib.zoo.registry.default_encoder`).
        init_model: continue from this model (same label values) instead of starting afresh: a refinement after
            the user corrected a slice.
        adapt: a pretraining method name: first pretrain the encoder for ``adapt_steps`` steps on this scan alone
            (its annotated slices feed MixCL's label term), starting from ``encoder`` when one is given.
        consistency: one of :data:`~ContrastiveSegLib.options.CONSISTENCY_MODES`: "bidirectional" trains two
            decoders that label the unannotated slices for each other (IDEAL's fine-tuning stage); "none" trains
            one decoder on the annotated slices only.
        prior_labels: also train on the shape prior's sure voxels of up to 24 unpainted slices between the painted
            ones (:func:`~ContrastiveSegLib.inference.shape_prior.prior_pseudo_labels`; an option, not the default:
            docs/finetuning.md).
    Returns:
        the fine-tuned :class:`TrainedModel`.
    """
    annotation = _annotation or _prepare(image, labels, axis)
    config = preset_config(preset, refine=init_model is not None, steps=steps, batch_size=batch_size)
    check_consistency(consistency)
    if init_model is not None and (adapt or CONSISTENCY_DECODERS[consistency] > 1):
        raise InputError("--adapt and --consistency apply to a new model, not to a refinement (--init-model)")
    if adapt_steps < 1:
        raise InputError(f"adapt steps must be >= 1, got {adapt_steps}")
    if adapt:
        from ContrastiveSegLib.methods import method_class

        try:
            method_class(adapt)
        except ValueError as error:
            raise InputError(str(error)) from None
    torch_device = resolve_device(device)
    encoder = default_encoder() if encoder is None else encoder
    encoder_path = resolve_encoder(encoder)
    _seed_everything(seed)
    spec = _stack.spec if _stack is not None else _input_spec(image, annotation, init_model)
    stack = _stack or SliceStack(normalise_intensity(image, spec.window), annotation.axis, spec)
    if init_model is not None:
        if tuple(init_model.label_values) != annotation.label_values:
            raise InputError(f"model classes {list(init_model.label_values)} do not match the labels' values "
                             f"{list(annotation.label_values)}")
        if init_model.axis != annotation.axis:
            raise InputError(f"model was trained along axis {init_model.axis}, the labels are annotated along "
                             f"axis {annotation.axis}")
        network = init_model.network
        encoder_name = init_model.encoder
    else:
        network = build_network(NetworkConfig(in_channels=spec.in_channels, num_classes=annotation.num_classes,
                                              decoders=CONSISTENCY_DECODERS[consistency]))
        encoder_name = "none"
        if encoder_path is not None:
            load_encoder_into(network, encoder_path, spec)
            encoder_name = str(encoder)
        if adapt:
            adapt_encoder(network, image, annotation, spec, adapt, adapt_steps, config.patch, encoder_path,
                          seed, device, progress, cancel)
            encoder_name = f"{encoder_name}+adapt:{adapt}"
    targets = np.moveaxis(annotation.target, annotation.axis, 0)
    training_slices = annotation.slices
    if prior_labels:
        prior = shape_prior_of(targets, annotation.num_classes, annotation.axis, spacing)
        if prior is not None:
            targets, training_slices = prior_pseudo_labels(prior, targets, annotation.painted)
    sampler = AnnotatedSliceSampler(stack, targets, training_slices, config.patch,
                                    divisor=network.config.divisor, seed=seed)
    unannotated = None
    if network.config.decoders == 2:
        try:
            unannotated = UnannotatedSliceSampler(stack, annotation.painted, config.patch,
                                                  divisor=network.config.divisor, seed=seed, centres=sampler.centre)
        except ValueError as error:
            raise InputError(str(error)) from None
    augmenter = BatchAugmenter(image_channels=2 * spec.context + 1, seed=seed)
    emit(progress, "finetune", f"fine-tuning on {describe_planes(annotation)} ({torch_device.type})")
    run_finetune(network, sampler, config, torch_device, augmenter, progress, cancel, unannotated)
    return TrainedModel(network.cpu(), annotation.label_values, annotation.axis, spec,
                        tuple(float(v) for v in spacing), encoder_name)


def adapt_encoder(network, image: np.ndarray, annotation: SparseAnnotation, spec: InputSpec, method: str,
                  steps: int, patch: int, encoder_path, seed: int, device: str, progress: ProgressCallback = None,
                  cancel=None) -> None:
    """Pretrain ``network.encoder`` in place with ``method`` for ``steps`` steps on this scan alone (slices along
    the annotation axis, the fine-tuning input spec; the annotated slices feed MixCL's label term), starting from
    ``encoder_path`` when given, else from random weights."""
    from ContrastiveSegLib.data.unlabelled import ArrayVolume
    from ContrastiveSegLib.training.pretrain import PretrainConfig, pretrain_encoder

    volume = ArrayVolume(image, labels=annotation.target, name="this scan")
    job = pretrain_encoder([volume], method, None, PretrainConfig(steps=steps, batch_size=8, seed=seed),
                           axis=annotation.axis, spec=spec, features=network.config.features,
                           norm=network.config.norm, patch=patch, init_encoder=encoder_path, device=device,
                           progress=progress, cancel=cancel)
    network.encoder.load_state_dict(job.method.encoder_state_dict())


def predict(model: TrainedModel, image: np.ndarray, *, labels: np.ndarray | None = None,
            spacing=None, device: str = DEFAULT_DEVICE, probabilities: bool = False, flip_tta: bool = False,
            postprocess: bool = True, shape_prior: bool = True, progress: ProgressCallback = None, cancel=None,
            _stack: SliceStack | None = None, _annotation: SparseAnnotation | None = None) -> SegmentResult:
    """Segment ``image`` with ``model``.

    With ``labels`` (the sparse annotation of this scan, decoded against the model's label values) the painted
    outlines, interpolated between the painted slices, weigh in as a shape prior
    (:mod:`ContrastiveSegLib.inference.shape_prior`; ``shape_prior=False`` turns it off), the prediction keeps
    only components that touch an annotated voxel of their class and the annotated voxels are copied in; without,
    the raw prediction is returned. ``spacing`` (x, y, z) mm is this scan's (default: the training scan's).
    """
    check_image(image)
    torch_device = resolve_device(device)
    annotation = _annotation
    if annotation is None and labels is not None:
        annotation = _prepare(image, labels, model.axis, model.label_values)
    stack = _stack or SliceStack(normalise_intensity(image, model.spec.window), model.axis, model.spec)
    targets = None if annotation is None else np.moveaxis(annotation.target, annotation.axis, 0)
    prior = None
    if targets is not None and shape_prior:
        prior = shape_prior_of(targets, len(model.label_values), model.axis,
                               model.spacing if spacing is None else spacing)
    classes, probs = predict_volume(model.network, stack, torch_device, divisor=model.network.config.divisor,
                                    flip_tta=flip_tta, keep_probabilities=probabilities, prior=prior,
                                    progress=progress, cancel=cancel)
    if targets is not None:
        if postprocess:
            classes = keep_annotated_components(classes, targets, len(model.label_values))
        paste_annotations(classes, targets)
    classes = np.moveaxis(classes, 0, model.axis)
    result_labels = label_lookup(model.label_values)[classes]
    if probs is not None:
        probs = np.moveaxis(probs, 1, model.axis + 1)
    return SegmentResult(labels=result_labels, probabilities=probs, model=model, axis=model.axis)


def shape_prior_of(targets: np.ndarray, num_classes: int, axis: int, spacing):
    """The shape prior of ``targets`` ((S, H, W), slices along array axis ``axis`` first) on a scan of
    ``spacing`` (x, y, z) mm, or None (fewer than two fully painted slices)."""
    spacing_zyx = tuple(float(v) for v in spacing)[::-1]
    inplane = tuple(v for a, v in enumerate(spacing_zyx) if a != axis)
    return build_shape_prior(targets, num_classes, inplane, spacing_zyx[axis])


def self_train_round(model: TrainedModel, stack: SliceStack, annotation: SparseAnnotation, spacing, *,
                     device: str = DEFAULT_DEVICE, preset: str = DEFAULT_PRESET, steps: int = 100, seed: int = 0,
                     progress: ProgressCallback = None, cancel=None) -> None:
    """Propagate the painting into the unpainted slices and train on it (in place).

    The network, fused with the shape prior, labels every slice; its confident voxels (fused probability of at
    least :data:`PSEUDO_CONFIDENCE`, in components that touch the painting) on up to :data:`PSEUDO_SLICES` evenly
    spread unpainted slices become extra targets, and training goes on for ``steps`` steps on them and on the
    painted slices, at a lower learning rate (incremental self-labelling, Anderson et al., BMC Medical Imaging
    2025; the confidence threshold plays the role of the self-paced weighting).
    """
    torch_device = resolve_device(device)
    targets = np.moveaxis(annotation.target, annotation.axis, 0)
    prior = shape_prior_of(targets, len(model.label_values), model.axis, spacing)
    emit(progress, "self-train", "labelling the unpainted slices for self-training")
    classes, confidence = predict_volume(model.network, stack, torch_device, divisor=model.network.config.divisor,
                                         prior=prior, keep_confidence=True, progress=progress, cancel=cancel)
    classes = keep_annotated_components(classes, targets, len(model.label_values))
    unpainted = np.setdiff1d(np.arange(stack.num_slices), annotation.painted)
    chosen = evenly_spread(unpainted, PSEUDO_SLICES)
    pseudo = targets.copy()
    for s in chosen:
        known = targets[s] != IGNORE
        label = np.where(confidence[s] >= round(PSEUDO_CONFIDENCE * 255), classes[s], IGNORE).astype(np.uint8)
        pseudo[s] = np.where(known, targets[s], label)
    slices = np.union1d(annotation.slices, chosen)
    base = preset_config(preset)
    config = dataclasses.replace(base, steps=steps, learning_rate=base.learning_rate * SELF_TRAIN_LR)
    sampler = AnnotatedSliceSampler(stack, pseudo, slices, config.patch, divisor=model.network.config.divisor,
                                    seed=seed + 1)
    augmenter = BatchAugmenter(image_channels=2 * model.spec.context + 1, seed=seed + 1)
    run_finetune(model.network, sampler, config, torch_device, augmenter, progress, cancel)
    model.network.cpu()


def label_lookup(label_values) -> np.ndarray:
    """Class index -> label value table in the narrowest unsigned type that holds every value."""
    top = max(label_values)
    dtype = np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.uint32 if top < 2**32 else np.uint64
    return np.asarray(label_values, dtype=dtype)


def describe_planes(annotation: SparseAnnotation) -> str:
    """"3 painted slices along axis 0 and 1 along axis 1": what the user painted, in words."""
    parts = [f"{len(s)} painted slice{'s' if len(s) != 1 else ''} along axis {a}"
             for a, s in sorted(annotation.planes.items(), key=lambda item: item[0] != annotation.axis)]
    return " and ".join(parts)


def segment(image: np.ndarray, labels: np.ndarray, spacing=(1.0, 1.0, 1.0), *, axis: int | None = None,
            preset: str = DEFAULT_PRESET, encoder: str | None = None, init_model: TrainedModel | None = None,
            device: str = DEFAULT_DEVICE, seed: int = 0, steps: int | None = None, batch_size: int | None = None,
            adapt: str | None = None, adapt_steps: int = ADAPT_STEPS, consistency: str = DEFAULT_CONSISTENCY,
            probabilities: bool = False, flip_tta: bool = False, postprocess: bool = True, shape_prior: bool = True,
            self_train: int = 0, prior_labels: bool = False, progress: ProgressCallback = None,
            cancel=None) -> SegmentResult:
    """Fine-tune on the annotated slices of ``labels`` and segment the whole ``image``.

    Every slice annotated along the axis means there is nothing to segment: the labels come back unchanged with
    a message, and nothing is trained. The options are :func:`finetune`'s and :func:`predict`'s, plus
    ``self_train``: that many further steps on the fused prediction's confident voxels (:func:`self_train_round`;
    0, the default, skips it).
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    annotation = _prepare(image, labels, axis)
    if not (annotation.target == IGNORE).any():
        message = f"every slice along axis {annotation.axis} is annotated: nothing to segment"
        emit(progress, "done", message)
        return SegmentResult(labels=labels.copy(), axis=annotation.axis, message=message)
    resolve_device(device)  # fail on a missing GPU before normalising a large volume
    spec = _input_spec(image, annotation, init_model)
    stack = SliceStack(normalise_intensity(image, spec.window), annotation.axis, spec)
    timings["prepare"] = time.perf_counter() - start
    start = time.perf_counter()
    model = finetune(image, labels, spacing, preset=preset, encoder=encoder, init_model=init_model, device=device,
                     seed=seed, steps=steps, batch_size=batch_size, adapt=adapt, adapt_steps=adapt_steps,
                     consistency=consistency, prior_labels=prior_labels, progress=progress, cancel=cancel,
                     _annotation=annotation, _stack=stack)
    timings["finetune"] = time.perf_counter() - start
    if self_train and shape_prior:
        start = time.perf_counter()
        self_train_round(model, stack, annotation, spacing, device=device, preset=preset, steps=self_train,
                         seed=seed, progress=progress, cancel=cancel)
        timings["self-train"] = time.perf_counter() - start
    start = time.perf_counter()
    result = predict(model, image, spacing=spacing, device=device, probabilities=probabilities, flip_tta=flip_tta,
                     postprocess=postprocess, shape_prior=shape_prior, progress=progress, cancel=cancel, _stack=stack,
                     _annotation=annotation)
    timings["predict"] = time.perf_counter() - start
    result.seconds = timings
    return result
