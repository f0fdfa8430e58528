"""The CutMix paper's evaluations: the suite (`suite`), calibration, WSOL localization (`wsol`), robustness,
OOD detection (`ood`), their pictures (`plots`), the shared plumbing (`common`), and for the evaluate stage what
to evaluate (`sources`), on what (`inputs`) and the method table (`report`).

Each name is re-exported from its leaf module; inside `study/`, import the leaf module itself.
"""

from study.evaluation.common import (  # noqa: F401
    model_device, eval_mode, check_images, check_labels, to_unit, Normalise, batch_ranges, resolve, predict_logits)
from study.evaluation.calibration import (  # noqa: F401
    Reliability, classification_metrics, reliability)
from study.evaluation.wsol import (  # noqa: F401
    CENTRE_SIGMA, DEFAULT_IOU_THRESHOLDS, MaxBoxAcc, cam_head, centre_gaussian_map, class_activation_maps,
    component_boxes, iou_inclusive, largest_component_boxes, max_box_acc, normalise_boxes, prior_max_box_acc,
    random_cam_baseline, reference_boxes, reference_max_box_acc, scoremaps, threshold_list, to_uint8_maps, top1_loc)
from study.evaluation.robustness import (  # noqa: F401
    DEFAULT_FGSM_EPS, FGSMCurve, InBetweenCurves, OcclusionCurves, default_hole_sizes, fgsm_curve, fgsm_perturb,
    in_between_curves, occlusion_curves)
from study.evaluation.ood import (  # noqa: F401
    NOISE_SETS, bootstrap_auroc, max_softmax, noise_images, ood_metrics, ood_scores, prepare_ood_images,
    softmax_confidence)
from study.evaluation.suite import (  # noqa: F401
    EvaluationResult, epoch_metrics, evaluate_model)
from study.evaluation.plots import (  # noqa: F401
    save_cam_grid, save_evaluation_plots, save_fgsm_curve, save_in_between_curves, save_occlusion_curves,
    save_reliability_diagram)
from study.evaluation.inputs import (  # noqa: F401
    OOD_KINDS, cam_size, localization_priors, ood_sets, test_split)
from study.evaluation.report import (  # noqa: F401
    ALPHA, BASELINE, HEADLINE, PRIMARY, comparisons, method_table, prior_verdicts)
from study.evaluation.sources import (  # noqa: F401
    HINT, ModelRef, SourceError, default_output_for, models_from_source)
