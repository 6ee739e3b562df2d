"""VisionZip in LLaVA-1.5 (``LlavaForConditionalGeneration``): image features are zipped tokens.

The one method replaced is ``get_image_features`` of the inner ``LlavaModel`` instance (both the
model's ``forward`` and ``generate``'s pre-encoding call it; the placeholder check and the merge
into the text embeddings are left as they are). It runs the vision tower to its penultimate layer
with VisionZip (``encoder.visionzip_features``), projects the ``dominant + contextual`` tokens of
each image with the model's projector, and returns them as the features of that image.

The CLS token: with ``vision_feature_select_strategy="default"`` LLaVA drops the CLS token from the
576 patch features. VisionZip, as published, keeps it among the dominant tokens and feeds all
``dominant + contextual`` tokens (64 for the default budget) to the projector; this module does the
same, whatever the strategy. The features come from the penultimate layer, which is what LLaVA's
``vision_feature_layer=-2`` selects; other layers, or several, are refused.
"""
from __future__ import annotations

import functools

import torch

from .budget import Budget
from .encoder import visionzip_features
from .graphs import GraphRelease, VisionGraphs
from .handle import bind_methods
from .vision_model import LANGUAGE_MODEL_OPTIONS, VisionZipOutput, pop_return_dict


def is_penultimate(layer, num_layers: int) -> bool:
    """Whether ``layer`` (an index into ``hidden_states``) selects the penultimate layer.

    ``hidden_states`` holds the embeddings and then each layer's output, ``num_layers + 1`` entries,
    so the penultimate layer's output is index ``-2`` or ``num_layers - 1``.
    """
    return isinstance(layer, int) and not isinstance(layer, bool) and layer in (-2, num_layers - 1)


def check_feature_layer(layer, vision_config, caller: str) -> None:
    """Raise ``ValueError`` unless ``layer`` selects the penultimate encoder layer."""
    if not is_penultimate(layer, vision_config.num_hidden_layers):
        raise ValueError(
            f"{caller}: VisionZip reads the penultimate vision layer, so `vision_feature_layer` "
            f"must be -2 (or {vision_config.num_hidden_layers - 1}), got {layer!r}"
        )


def project_zipped(llava_model, pixel_values: torch.Tensor, *, budget: Budget):
    """Zip each crop of ``pixel_values`` ``[C, 3, H, W]`` and project it into the text width.

    Returns ``(tokens [C, t, D_vision], dominant_idx [C, dominant], features [C, t, D_text])``
    with ``t = budget.tokens``. This is the vision path that ``cuda_graphs=True`` captures
    (``graphs.py``); the replaced methods call it as ``project(llava_model, pixel_values)``.
    """
    tokens, dominant_idx = visionzip_features(
        llava_model.vision_tower,
        pixel_values,
        budget.dominant,
        budget.contextual,
        backend=budget.backend,
    )
    return tokens, dominant_idx, llava_model.multi_modal_projector(tokens)


def get_image_features(
    llava_model,
    pixel_values: torch.Tensor,
    vision_feature_layer=None,
    vision_feature_select_strategy=None,
    image_sizes=None,
    *,
    project,
    **kwargs,
):
    """The replacement ``LlavaModel.get_image_features``: ``[B, 3, H, W]`` pixels -> features.

    Returns a ``VisionZipOutput``: ``pooler_output`` is the list of ``B`` projected features
    ``[dominant + contextual, D_text]`` the model merges into the placeholders;
    ``last_hidden_state`` ``[B, dominant + contextual, D_vision]`` the zipped tokens before the
    projector; ``dominant_idx`` ``[B, dominant]``. ``project`` is ``project_zipped`` with the budget
    bound, or its ``VisionGraphs``. ``vision_feature_select_strategy`` is accepted
    and ignored (see the module docstring); ``return_dict=False`` returns the output's tuple.
    ``output_attentions``/``output_hidden_states``, which the model's ``forward`` passes on from its
    own arguments for the language model, are accepted; the output holds no vision-layer ones.
    """
    caller = "VisionZip get_image_features"
    if vision_feature_layer is not None:
        check_feature_layer(vision_feature_layer, llava_model.config.vision_config, caller)
    if image_sizes is not None:
        raise ValueError(
            f"{caller}: `image_sizes` is only used by variable-resolution vision towers, which "
            "VisionZip does not support; CLIP and SigLIP towers take fixed-size images"
        )
    return_dict = pop_return_dict(kwargs, caller, ignored=LANGUAGE_MODEL_OPTIONS)
    tokens, dominant_idx, features = project(llava_model, pixel_values)
    output = VisionZipOutput(
        last_hidden_state=tokens, pooler_output=list(features), dominant_idx=dominant_idx
    )
    return output.to_tuple() if return_dict is False else output


def patch_image_features(
    llava_model, budget: Budget, image_features, graph_cache_size: int | None = None
) -> list:
    """Replace ``get_image_features`` on a ``LlavaModel``/``LlavaNextModel`` instance with
    ``image_features`` (which takes ``project``); the patches undo it.

    With ``graph_cache_size`` the vision path runs through a ``VisionGraphs`` of that many graphs,
    and the last patch frees them.
    """
    check_feature_layer(
        llava_model.config.vision_feature_layer, llava_model.config.vision_config, "apply_visionzip"
    )
    project = functools.partial(project_zipped, budget=budget)
    releases = []
    if graph_cache_size is not None:
        project = VisionGraphs(project, graph_cache_size)
        releases.append(GraphRelease(project))
    methods = {"get_image_features": functools.partial(image_features, project=project)}
    return bind_methods(llava_model, methods, owner_arg="model") + releases


def patch_llava(llava_model, budget: Budget, graph_cache_size: int | None = None) -> list:
    """Replace ``get_image_features`` on the ``LlavaModel`` instance; the patches undo it."""
    return patch_image_features(llava_model, budget, get_image_features, graph_cache_size)
