"""The library's front door: segment / finetune / predict on plain arrays.

The CLI and the Slicer module both call these; neither re-implements a step. Arrays are (z, y, x) as SimpleITK
and Slicer return them; ``spacing`` is (x, y, z) in mm. ``progress`` receives event dicts (see
:mod:`ContrastiveSegLib.progress`); setting the ``cancel`` event (a ``threading.Event``) stops the run with
:class:`~ContrastiveSegLib.errors.Cancelled` at the next step.

A run goes one way through its stages: the options become one :class:`~ContrastiveSegLib.plan.TrainingPlan`
(checked once, device resolved once); the arrays become one :class:`~ContrastiveSegLib.data.case.PreparedCase`
(prepare); then :func:`initial_network` (initialise), :func:`finetune_case` (fine-tune), the experimental
:func:`self_train_round`, and :func:`predict_case` (predict and post-process); the CLI writes. ``segment`` and
``finetune`` take only what users are offered; :mod:`ContrastiveSegLib.experimental` adds the options the
benchmark measures.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ContrastiveSegLib.data.case import DEFAULT_SPEC, PreparedCase, check_image, read_annotation, spec_for
from ContrastiveSegLib.device import BatchLimits, fine_tuning_advice, resolve_device
from ContrastiveSegLib.errors import InputError, OutOfMemory
from ContrastiveSegLib.inference.postprocess import (fill_vanished_slices, keep_annotated_components,
                                                    paste_annotations)
from ContrastiveSegLib.inference.predict import predict_volume
from ContrastiveSegLib.inference.fusion import ExpertsRun, fused_prior_of
from ContrastiveSegLib.inference.region import region_of_case
from ContrastiveSegLib.inference.shape_prior import (PSEUDO_SLICES, build_shape_prior, evenly_spread,
                                                     prior_pseudo_labels, stack_spacing)
from ContrastiveSegLib.io.annotations import IGNORE, SparseAnnotation
from ContrastiveSegLib.model import TrainedModel, load_encoder_into
from ContrastiveSegLib.networks import NetworkConfig, build_network
from ContrastiveSegLib.options import (ADAPT_BATCH_SIZE, ADAPT_STEPS, AXIS_LETTERS, CONSISTENCY_DECODERS,
                                       DEFAULT_CONSISTENCY, DEFAULT_DEVICE, DEFAULT_PRESET, RANDOM_INIT)
from ContrastiveSegLib.plan import TrainingPlan, plan_training
from ContrastiveSegLib.progress import ProgressCallback, emit
from ContrastiveSegLib.threads import use_threads
from ContrastiveSegLib.training.finetune import train_segmentation, training_plugins

__all__ = ["DEFAULT_SPEC", "PreparedCase", "SegmentResult", "TrainingPlan", "check_image", "finetune",
           "finetune_case", "initial_network", "plan_training", "predict", "predict_case", "segment",
           "self_train_round", "self_training_targets"]

SELF_TRAIN_CONFIDENCE = 0.9  # fused probability a voxel needs to become a self-training target
SELF_TRAIN_LR = 0.3  # self-training learning rate as a fraction of the preset's


@dataclass
class SegmentResult:
    """What :func:`segment` and :func:`predict` return.

    Attributes:
        labels: (z, y, x) label map with the user's label values.
        probabilities: (C, z, y, x) float32 class probabilities (background first), or None.
        model: the model fine-tuned by :func:`segment` (None from :func:`predict`, and when nothing was trained).
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


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def training_case(image: np.ndarray, annotation: SparseAnnotation, spacing,
                  init_model: TrainedModel | None = None) -> PreparedCase:
    """The case a model trains on: a refinement keeps its model's input spec, a new model windows the
    intensities around the painted structures (:func:`~ContrastiveSegLib.data.case.spec_for`)."""
    spec = init_model.spec if init_model is not None else spec_for(image, annotation)
    return PreparedCase.build(image, annotation, spacing, spec)


def finetune(image: np.ndarray, labels: np.ndarray, spacing=(1.0, 1.0, 1.0), *, axis: int | None = None,
             preset: str = DEFAULT_PRESET, encoder: str | None = None, init_model: TrainedModel | None = None,
             device: str = DEFAULT_DEVICE, seed: int = 0, steps: int | None = None, batch_size: int | None = None,
             adapt: str | None = None, adapt_steps: int = ADAPT_STEPS, consistency: str = DEFAULT_CONSISTENCY,
             threads: int | None = None, progress: ProgressCallback = None, cancel=None) -> TrainedModel:
    """Fine-tune a 2.5D U-Net on the annotated slices of ``labels``.

    Args:
        image: (z, y, x) intensities (any units: CT HU or MR).
        labels: (z, y, x) sparse label map (see :mod:`ContrastiveSegLib.io.annotations`).
        encoder: a shipped encoder name, a .safetensors path, "random" for random initialisation, or None for the
            shipped default (:func:`~ContrastiveSegLib.zoo.registry.default_encoder`).
        init_model: continue from this model (same label values) instead of starting afresh: a refinement after
            the user corrected a slice.
        adapt: a pretraining method name: first pretrain the encoder for ``adapt_steps`` steps on this scan alone
            (its annotated slices feed MixCL's label term), starting from ``encoder`` when one is given.
        consistency: one of :data:`~ContrastiveSegLib.options.CONSISTENCY_MODES`: "bidirectional" trains two
            decoders that label the unannotated slices for each other (IDEAL's fine-tuning stage); "off" trains
            one decoder on the annotated slices only.
        threads: CPU threads for torch (default: :func:`~ContrastiveSegLib.threads.choose_threads`, the project's
            default that the CLI and the Slicer module use too); restored when the call returns.
    Returns:
        the fine-tuned :class:`TrainedModel`.
    """
    return run_finetune(image, labels, spacing, axis=axis, threads=threads, progress=progress, cancel=cancel,
                        preset=preset, encoder=encoder, init_model=init_model, device=device, seed=seed, steps=steps,
                        batch_size=batch_size, adapt=adapt, adapt_steps=adapt_steps, consistency=consistency)


def run_finetune(image: np.ndarray, labels: np.ndarray, spacing, *, axis: int | None, threads: int | None,
                 progress: ProgressCallback, cancel, **options) -> TrainedModel:
    """:func:`finetune` with ``options`` for :func:`~ContrastiveSegLib.plan.plan_training` (the experimental
    ones included: :mod:`ContrastiveSegLib.experimental`)."""
    with use_threads(threads):
        plan = plan_training(**options)  # checked and resolved before a large volume is normalised
        case = training_case(image, read_annotation(image, labels, axis), spacing, plan.init_model)
        return finetune_case(case, plan, progress=progress, cancel=cancel)


def _check_refinement(init_model: TrainedModel, annotation: SparseAnnotation) -> None:
    """InputError when a model to refine does not fit this painting (other classes, other plane)."""
    if tuple(init_model.label_values) != annotation.label_values:
        raise InputError(f"model classes {list(init_model.label_values)} do not match the labels' values "
                         f"{list(annotation.label_values)}")
    if init_model.axis != annotation.axis:
        raise InputError(f"model was trained on slices along {AXIS_LETTERS[init_model.axis]}, the labels are "
                         f"painted on slices along {AXIS_LETTERS[annotation.axis]}")


def finetune_case(case: PreparedCase, plan: TrainingPlan, *, progress: ProgressCallback = None, cancel=None,
                  batches: BatchLimits | None = None, later: tuple[int, bool] | None = None) -> TrainedModel:
    """Fine-tune on a prepared case as ``plan`` says (:func:`~ContrastiveSegLib.plan.plan_training`).

    ``batches`` carries the batch size that fitted on the GPU to the run's later stages; ``later`` is what the run
    does next, for the ETA: (self-training steps, whether the prediction uses flip TTA) when it predicts
    (:func:`later_work_in_steps`), None when nothing follows.
    """
    annotation, config = case.annotation, plan.config
    after = 0.0 if later is None else later_work_in_steps(case, config, *later)
    _seed_everything(plan.seed)
    network, encoder_name = initial_network(case, plan, progress, cancel)
    targets, training_slices = case.targets, annotation.slices
    if plan.prior_labels:
        prior = shape_prior_of(targets, annotation.num_classes, annotation.axis, case.spacing)
        if prior is not None:
            targets, training_slices = prior_pseudo_labels(prior, targets, annotation.painted)
    plugins = training_plugins(case, network, targets, training_slices, config.patch, plan.seed)
    emit(progress, "finetune", f"fine-tuning on {describe_planes(annotation)} ({plan.device.type})")
    train_segmentation(network, plugins, config, plan.device, progress=progress, cancel=cancel, batches=batches,
                       after_steps=after)
    return TrainedModel(network.cpu(), annotation.label_values, annotation.axis, case.spec, case.spacing,
                        encoder_name)


def initial_network(case: PreparedCase, plan: TrainingPlan, progress: ProgressCallback = None,
                    cancel=None) -> tuple[torch.nn.Module, str]:
    """The network fine-tuning starts from, and the encoder's name as the model records it: the refined model's
    (checked against this painting), or a new one (one decoder, or two for bidirectional consistency) with the
    plan's encoder weights loaded when one is chosen, adapted on this scan when asked."""
    if plan.init_model is not None:
        _check_refinement(plan.init_model, case.annotation)
        return plan.init_model.network, plan.init_model.encoder
    network = build_network(NetworkConfig(in_channels=case.spec.in_channels, num_classes=case.annotation.num_classes,
                                          decoders=CONSISTENCY_DECODERS[plan.consistency]))
    encoder_name = RANDOM_INIT
    if plan.encoder_path is not None:
        load_encoder_into(network, plan.encoder_path, case.spec)
        encoder_name = str(plan.encoder)
    if plan.adapt:
        adapt_encoder(network, case.image, case.annotation, case.spec, plan.adapt, plan.adapt_steps,
                      plan.config.patch, plan.encoder_path, plan.seed, plan.device, progress, cancel)
        encoder_name = f"{encoder_name}+adapt:{plan.adapt}"
    return network, encoder_name


def later_work_in_steps(case: PreparedCase, config, self_train: int, flip_tta: bool) -> float:
    """The work of a ``segment``'s stages after fine-tuning (prediction, and a self-training round's training and
    labelling), in fine-tuning steps, for the ETA: a training step is a forward and a backward pass (about three
    forward passes) over ``batch_size`` crops of ``patch`` squared pixels; prediction a forward pass (two with flip
    TTA) over every whole slice."""
    step = 3.0 * config.batch_size * config.patch ** 2
    pixels = case.stack.num_slices * case.stack.height * case.stack.width
    prediction = pixels * (2 if flip_tta else 1) / step
    return prediction + (self_train + pixels / step if self_train else 0.0)


def adapt_encoder(network, image: np.ndarray, annotation: SparseAnnotation, spec, method: str,
                  steps: int, patch: int, encoder_path, seed: int, device, progress: ProgressCallback = None,
                  cancel=None) -> None:
    """Pretrain ``network.encoder`` in place with ``method`` for ``steps`` steps on this scan alone (slices along
    the annotation axis, the fine-tuning input spec; the annotated slices feed MixCL's label term), starting from
    ``encoder_path`` when given, else from random weights."""
    from ContrastiveSegLib.data.unlabelled import ArrayVolume
    from ContrastiveSegLib.training.pretrain import PretrainConfig, pretrain_encoder

    volume = ArrayVolume(image, labels=annotation.target, name="this scan")
    try:
        job = pretrain_encoder([volume], method, None,
                               PretrainConfig(steps=steps, batch_size=ADAPT_BATCH_SIZE, seed=seed),
                               axis=annotation.axis, spec=spec, features=network.config.features,
                               norm=network.config.norm, patch=patch, init_encoder=encoder_path, device=device,
                               progress=progress, cancel=cancel)
    except OutOfMemory as error:  # pretraining's advice names pretrain's options; say what this command takes
        raise OutOfMemory(f"out of memory while adapting the encoder at batch size {ADAPT_BATCH_SIZE}: "
                          f"{fine_tuning_advice(patch)}") from error
    network.encoder.load_state_dict(job.method.encoder_state_dict())


def predict(model: TrainedModel, image: np.ndarray, *, labels: np.ndarray | None = None,
            spacing=None, device: str = DEFAULT_DEVICE, probabilities: bool = False, flip_tta: bool = False,
            postprocess: bool = True, shape_prior: bool = True, threads: int | None = None,
            progress: ProgressCallback = None, cancel=None) -> SegmentResult:
    """Segment ``image`` with ``model``.

    With ``labels`` (the sparse annotation of this scan, decoded against the model's label values) the painted
    outlines, interpolated between the painted slices, weigh in as a shape prior
    (:mod:`ContrastiveSegLib.inference.shape_prior`; ``shape_prior=False`` turns it off), the prediction keeps
    only components that touch an annotated voxel of their class and the annotated voxels are copied in; without,
    the raw prediction is returned. ``spacing`` (x, y, z) mm is this scan's (default: the training scan's).
    ``threads`` as in :func:`finetune`. The result's ``model`` is None: nothing was trained.
    """
    check_image(image)
    with use_threads(threads):
        torch_device = resolve_device(device)  # once, and before a large volume is normalised
        annotation = None if labels is None else read_annotation(image, labels, model.axis, model.label_values)
        case = PreparedCase.build(image, annotation, model.spacing if spacing is None else spacing, model.spec,
                                  axis=model.axis)
        return predict_case(model, case, device=torch_device, probabilities=probabilities, flip_tta=flip_tta,
                            postprocess=postprocess, shape_prior=shape_prior, progress=progress, cancel=cancel)


def predict_case(model: TrainedModel, case: PreparedCase, *, device: str | torch.device = DEFAULT_DEVICE,
                 probabilities: bool = False, flip_tta: bool = False, postprocess: bool = True,
                 shape_prior: bool = True, progress: ProgressCallback = None, cancel=None,
                 batches: BatchLimits | None = None, experts: ExpertsRun | None = None) -> SegmentResult:
    """:func:`predict` on a prepared case (same options; the case's stack must use ``model``'s input spec;
    ``batches`` as in :func:`finetune_case`; ``experts``: the fused prior already under way, see
    :func:`run_segment`)."""
    torch_device = resolve_device(device)
    targets = case.targets
    prior = None
    if experts is not None:
        prior = experts.result()
    elif targets is not None and shape_prior:
        prior = fused_prior_of(case.image, targets, len(model.label_values), model.axis, case.spacing)
    # Only components touching the painting are kept, so with post-processing only where the painting reaches is
    # predicted (inference/region.py); background elsewhere.
    region = region_of_case(targets if postprocess else None, len(model.label_values), model.axis, case.spacing,
                            tuple(case.stack.slices.shape))
    classes, probs = predict_volume(model.network, case.stack, torch_device, divisor=model.network.config.divisor,
                                    flip_tta=flip_tta, keep_probabilities=probabilities, prior=prior,
                                    progress=progress, cancel=cancel, batches=batches, region=region)
    if targets is not None:
        if postprocess:  # outside the region every voxel is background: its components lie inside
            classes[region.box] = keep_annotated_components(classes[region.box], targets[region.box],
                                                            len(model.label_values))
            grown = None if prior is None else prior.grown_classes()
            if grown is not None:
                fill_vanished_slices(classes, grown, targets, len(model.label_values))
        paste_annotations(classes, targets)
    classes = np.moveaxis(classes, 0, model.axis)
    result_labels = label_lookup(model.label_values)[classes]
    if probs is not None:
        probs = np.moveaxis(probs, 1, model.axis + 1)
    return SegmentResult(labels=result_labels, probabilities=probs, axis=model.axis)


def shape_prior_of(targets: np.ndarray, num_classes: int, axis: int, spacing):
    """The shape prior of ``targets`` ((S, H, W), slices along array axis ``axis`` first) on a scan of
    ``spacing`` (x, y, z) mm, or None (fewer than two fully painted slices)."""
    inplane, slice_mm = stack_spacing(spacing, axis)
    return build_shape_prior(targets, num_classes, inplane, slice_mm)


def self_train_round(model: TrainedModel, case: PreparedCase, plan: TrainingPlan, *, shape_prior: bool = True,
                     progress: ProgressCallback = None, cancel=None, batches: BatchLimits | None = None) -> None:
    """Propagate the painting into the unpainted slices and train on it for ``plan.self_train`` steps (in place;
    experimental: :mod:`ContrastiveSegLib.experimental`, used by the benchmark).

    The network (fused with the shape prior unless ``shape_prior`` is False) labels every slice; its confident
    voxels (probability of at least :data:`SELF_TRAIN_CONFIDENCE`, in components that touch the painting) on up to
    :data:`PSEUDO_SLICES` evenly spread unpainted slices become extra targets (:func:`self_training_targets`), and
    the fine-tuning loop goes on with the same plug-ins
    (:func:`~ContrastiveSegLib.training.finetune.training_plugins`: the supervised objective now on these targets
    and the painted slices; a two-decoder network keeps its bidirectional consistency) at the plan's batch size and
    a lower learning rate (incremental self-labelling, Anderson et al., BMC Medical Imaging 2025;
    the confidence threshold plays the role of the self-paced weighting).
    """
    pseudo, slices = self_training_targets(model, case, plan.device, shape_prior=shape_prior, progress=progress,
                                           cancel=cancel, batches=batches)
    config = dataclasses.replace(plan.config, steps=plan.self_train,
                                 learning_rate=plan.config.learning_rate * SELF_TRAIN_LR)
    plugins = training_plugins(case, model.network, pseudo, slices, config.patch, plan.seed + 1)
    train_segmentation(model.network, plugins, config, plan.device, progress=progress, cancel=cancel,
                       batches=batches)
    model.network.cpu()


def self_training_targets(model: TrainedModel, case: PreparedCase, device: torch.device, *, shape_prior: bool = True,
                          progress: ProgressCallback = None, cancel=None,
                          batches: BatchLimits | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A self-training round's targets and the stack positions to sample: the painting, plus on up to
    :data:`PSEUDO_SLICES` evenly spread unpainted slices the voxels ``model`` (fused with the shape prior unless
    ``shape_prior`` is False) labels with a probability of at least :data:`SELF_TRAIN_CONFIDENCE`, in components
    that touch the painting."""
    annotation, stack, targets = case.annotation, case.stack, case.targets
    prior = shape_prior_of(targets, len(model.label_values), model.axis, case.spacing) if shape_prior else None
    emit(progress, "self-train", "labelling the unpainted slices for self-training")
    classes, confidence = predict_volume(model.network, stack, device, divisor=model.network.config.divisor,
                                         prior=prior, keep_confidence=True, progress=progress, cancel=cancel,
                                         batches=batches)
    classes = keep_annotated_components(classes, targets, len(model.label_values))
    unpainted = np.setdiff1d(np.arange(stack.num_slices), annotation.painted)
    chosen = evenly_spread(unpainted, PSEUDO_SLICES)
    pseudo = targets.copy()
    for s in chosen:
        known = targets[s] != IGNORE
        label = np.where(confidence[s] >= round(SELF_TRAIN_CONFIDENCE * 255), classes[s], IGNORE).astype(np.uint8)
        pseudo[s] = np.where(known, targets[s], label)
    return pseudo, np.union1d(annotation.slices, chosen)


def label_lookup(label_values) -> np.ndarray:
    """Class index -> label value table in the narrowest unsigned type that holds every value."""
    top = max(label_values)
    dtype = np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.uint32 if top < 2**32 else np.uint64
    return np.asarray(label_values, dtype=dtype)


def describe_planes(annotation: SparseAnnotation) -> str:
    """"3 painted slices along k and 1 along j": what the user painted, in words (the axis letters of
    :data:`~ContrastiveSegLib.options.AXIS_LETTERS`, as ``--axis`` and the summary name them)."""
    parts = [f"{len(s)} painted slice{'s' if len(s) != 1 else ''} along {AXIS_LETTERS[a]}"
             for a, s in sorted(annotation.planes.items(), key=lambda item: item[0] != annotation.axis)]
    return " and ".join(parts)


def segment(image: np.ndarray, labels: np.ndarray, spacing=(1.0, 1.0, 1.0), *, axis: int | None = None,
            preset: str = DEFAULT_PRESET, encoder: str | None = None, init_model: TrainedModel | None = None,
            device: str = DEFAULT_DEVICE, seed: int = 0, steps: int | None = None, batch_size: int | None = None,
            adapt: str | None = None, adapt_steps: int = ADAPT_STEPS, consistency: str = DEFAULT_CONSISTENCY,
            probabilities: bool = False, flip_tta: bool = False, postprocess: bool = True, shape_prior: bool = True,
            threads: int | None = None, progress: ProgressCallback = None, cancel=None) -> SegmentResult:
    """Fine-tune on the annotated slices of ``labels`` and segment the whole ``image``.

    Every slice annotated along the axis means there is nothing to segment: the labels come back unchanged with
    a message, and nothing is trained. The options are :func:`finetune`'s and :func:`predict`'s. A batch size that
    had to be halved on the GPU stays halved for the run's later stages.
    """
    return run_segment(image, labels, spacing, axis=axis, threads=threads, progress=progress, cancel=cancel,
                       prediction=dict(probabilities=probabilities, flip_tta=flip_tta, postprocess=postprocess,
                                       shape_prior=shape_prior),
                       preset=preset, encoder=encoder, init_model=init_model, device=device, seed=seed, steps=steps,
                       batch_size=batch_size, adapt=adapt, adapt_steps=adapt_steps, consistency=consistency)


def run_segment(image: np.ndarray, labels: np.ndarray, spacing, *, axis: int | None, threads: int | None,
                progress: ProgressCallback, cancel, prediction: dict, **options) -> SegmentResult:
    """:func:`segment`, its stages in order: plan (options checked, device resolved, once), prepare, fine-tune,
    self-train (experimental), predict. ``prediction`` holds :func:`predict_case`'s options, ``options``
    :func:`~ContrastiveSegLib.plan.plan_training`'s (the experimental ones included:
    :mod:`ContrastiveSegLib.experimental`)."""
    with use_threads(threads):
        plan = plan_training(**options)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        annotation = read_annotation(image, labels, axis)
        if not (annotation.target == IGNORE).any():
            message = f"every slice along {AXIS_LETTERS[annotation.axis]} is annotated: nothing to segment"
            emit(progress, "done", message)
            return SegmentResult(labels=labels.copy(), axis=annotation.axis, message=message)
        case = training_case(image, annotation, spacing, plan.init_model)
        batches = BatchLimits()  # what fitted on the GPU in one stage, for the next
        timings["prepare"] = time.perf_counter() - start
        # The experts (contour interpolation, grow-cut) depend on the painting only: they run beside the training.
        experts = None
        if prediction["shape_prior"] and case.targets is not None:
            experts = ExpertsRun(case, annotation.num_classes, cancel)
        try:
            start = time.perf_counter()
            model = finetune_case(case, plan, progress=progress, cancel=cancel, batches=batches,
                                  later=(plan.self_train, prediction["flip_tta"]))
            timings["finetune"] = time.perf_counter() - start
            if plan.self_train:
                start = time.perf_counter()
                self_train_round(model, case, plan, shape_prior=prediction["shape_prior"], progress=progress,
                                 cancel=cancel, batches=batches)
                timings["self-train"] = time.perf_counter() - start
            start = time.perf_counter()
            result = predict_case(model, case, device=plan.device, progress=progress, cancel=cancel,
                                  batches=batches, experts=experts, **prediction)
            timings["predict"] = time.perf_counter() - start
        except BaseException:
            if experts is not None:
                experts.stop()
            raise
        result.model = model
        result.seconds = timings
        return result
