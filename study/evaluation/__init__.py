"""The CutMix paper's evaluations: the suite (`suite`), calibration, WSOL localization (`wsol`), robustness,
OOD detection (`ood`), their pictures (`plots`), the shared plumbing (`common`), and for the evaluate stage what
to evaluate (`sources`), on what (`inputs`) and the method table (`report`).

Each name is re-exported from its leaf module and imported on first use (study.lazy, PEP 562), so
importing one leaf module does not import its siblings; inside `study/`, import the leaf module itself.
"""

from study.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "common": ("model_device", "eval_mode", "check_images", "check_labels", "to_unit", "Normalise", "batch_ranges",
        "resolve", "predict_logits"),
    "calibration": ("Reliability", "classification_metrics", "reliability"),
    "wsol": ("CENTRE_SIGMA", "DEFAULT_IOU_THRESHOLDS", "MaxBoxAcc", "cam_head", "centre_gaussian_map",
        "class_activation_maps", "component_boxes", "iou_inclusive", "largest_component_boxes", "max_box_acc",
        "normalise_boxes", "prior_max_box_acc", "random_cam_baseline", "reference_boxes", "reference_max_box_acc",
        "scoremaps", "threshold_list", "to_uint8_maps", "top1_loc"),
    "robustness": ("DEFAULT_FGSM_EPS", "FGSMCurve", "InBetweenCurves", "OcclusionCurves", "default_hole_sizes",
        "fgsm_curve", "fgsm_perturb", "in_between_curves", "occlusion_curves"),
    "ood": ("NOISE_SETS", "bootstrap_auroc", "max_softmax", "noise_images", "ood_metrics", "ood_scores",
        "prepare_ood_images", "softmax_confidence"),
    "suite": ("EvaluationResult", "epoch_metrics", "evaluate_model"),
    "plots": ("save_cam_grid", "save_evaluation_plots", "save_fgsm_curve", "save_in_between_curves",
        "save_occlusion_curves", "save_reliability_diagram"),
    "inputs": ("OOD_KINDS", "cam_size", "localization_priors", "ood_sets", "test_split"),
    "report": ("ALPHA", "BASELINE", "HEADLINE", "PRIMARY", "comparisons", "method_table", "prior_verdicts"),
    "sources": ("HINT", "ModelRef", "SourceError", "default_output_for", "models_from_source"),
})
