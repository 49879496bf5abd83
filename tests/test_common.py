"""scikit-learn's common estimator checks (``check_estimator``) for the skdfl estimators.

To add an estimator, append a fast instance to ``_estimators()`` and, only if unavoidable, list the checks
it cannot pass (with the reason) in ``_expected_failed_checks``.
"""

from __future__ import annotations

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from skdfl.embedder import BackboneEmbedder
from skdfl.heads import FocalHeadClassifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TabularCheckedEmbedder(BackboneEmbedder):
    """BackboneEmbedder claiming 2-D input so that sklearn runs its common checks at all.

    The real class declares ``two_d_array=False`` (it embeds images), which makes ``check_estimator`` skip
    every check. Here the API-level checks (params, clone, repr, tags, init, set_params...) run for real;
    the checks that feed tabular 2-D data are listed in ``_EMBEDDER_TABULAR_CHECKS`` and re-implemented on
    images in ``tests/test_embedder_checks.py``.
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True
        tags.input_tags.three_d_array = False
        return tags


_IMAGES_ONLY = "feeds a tabular 2-D float array; an image transformer needs (n, H, W, 3) images or paths"
# check name -> the image version of the same property in tests/test_embedder_checks.py
_EMBEDDER_TABULAR_CHECKS = {
    "check_dict_unchanged": "test_transform_leaves_estimator_dict_unchanged",
    "check_dont_overwrite_parameters": "test_fit_does_not_change_public_attributes",
    "check_estimators_overwrite_params": "test_fit_does_not_change_public_attributes",
    "check_dtype_object": "test_object_arrays_of_paths_and_images",
    "check_estimators_dtypes": "test_image_dtypes",
    "check_estimators_empty_data_messages": "test_embedder.py::test_bad_input_shapes_raise_clear_errors",
    "check_estimators_fit_returns_self": "test_fit_returns_self",
    "check_estimators_nan_inf": "test_embedder.py::test_nan_and_out_of_range_float_images_are_refused",
    "check_estimators_pickle": "test_pickle_round_trip_including_readonly_memmap_input",
    "check_readonly_memmap_input": "test_pickle_round_trip_including_readonly_memmap_input",
    "check_f_contiguous_array_estimator": "test_fortran_ordered_images",
    "check_fit2d_1feature": "test_single_sample_and_single_source",
    "check_fit2d_1sample": "test_single_sample_and_single_source",
    "check_fit2d_predict1d": "test_embedder.py::test_bad_input_shapes_raise_clear_errors",
    "check_fit_check_is_fitted": "test_transform_before_fit_raises_not_fitted",
    "check_fit_idempotent": "test_fit_is_idempotent",
    "check_fit_score_takes_y": "test_fit_accepts_and_ignores_y",
    "check_methods_sample_order_invariance": "test_sample_order_and_subset_invariance",
    "check_methods_subset_invariance": "test_sample_order_and_subset_invariance",
    "check_n_features_in": "test_n_features_in_counts_sources",
    "check_n_features_in_after_fitting": "test_n_features_in_counts_sources",
    "check_pipeline_consistency": "test_pipeline_consistency",
    "check_positive_only_tag_during_fit": "test_embedder.py::test_bad_input_shapes_raise_clear_errors",
    "check_transformer_data_not_an_array": "test_object_arrays_of_paths_and_images",
    "check_transformer_general": "test_fit_transform_equals_fit_then_transform",
}


def _estimators():
    """Instances under test, configured to be fast but still pass the accuracy checks.

    ``check_classifiers_train`` requires > 0.83 training accuracy on 300 standardised blobs; a tiny head
    with a large learning rate reaches ~0.92-0.95 in 10 epochs (checked over 8 seeds).
    """
    return [
        FocalHeadClassifier(hidden_units=(16,), lr=0.02, max_epochs=10, batch_size=32, random_state=0),
        # The 2-D augmentation-bank path (one block of any width) with test-time averaging.
        FocalHeadClassifier(
            lr=0.02, max_epochs=10, batch_size=32, bank_size=1, test_time_augmentation=True, random_state=0
        ),
        TabularCheckedEmbedder("resnet18", pretrained=False, image_size=16, precision="fp32", verbose=0),
    ]


def _expected_failed_checks(estimator):
    """Map check name -> reason for the checks ``estimator`` is known to fail."""
    if isinstance(estimator, BackboneEmbedder):
        return {
            name: f"{_IMAGES_ONLY}; tested on images in {where}"
            for name, where in _EMBEDDER_TABULAR_CHECKS.items()
        }
    if isinstance(estimator, FocalHeadClassifier):
        return {
            "check_sample_weight_equivalence_on_dense_data": (
                "float32 training: weighted and repeated fits agree to ~2e-7, above the check's rtol=1e-7; "
                "tested at atol=1e-6 in test_heads_fit_api.py::test_integer_sample_weight_equals_repeating_samples"
            )
        }
    return {}


@parametrize_with_checks(_estimators(), expected_failed_checks=_expected_failed_checks)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
