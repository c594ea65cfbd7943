"""Keys that darknet reads but that leave the forward pass yoloprune computes unchanged, per section.

They are kept in a block's `extra` and written back, so a cfg goes back to darknet as it came;
yoloprune's own training does not apply them. The reasons follow AlexeyAB/darknet, src/parser.c.
"""

from __future__ import annotations

# Read for every layer, after the layer's own options. Training only: which layers backpropagate or
# update and from when (stopbackward, onlyforward, train_only_bn, dont_update, burnin_update), the
# layer's learning-rate factor (learning_rate) and a bound on its weights after each update (clip).
ANY_LAYER_PASSIVE_KEYS = frozenset(
    {"stopbackward", "onlyforward", "train_only_bn", "dont_update", "burnin_update", "learning_rate", "clip"}
)
# GPU stream scheduling: the order in which darknet runs layers on the GPU, not what they compute.
_STREAM_KEYS = frozenset({"stream", "wait_stream"})
CONVOLUTIONAL_PASSIVE_KEYS = ANY_LAYER_PASSIVE_KEYS | _STREAM_KEYS | {
    # training-time only: assisted excitation runs only while training, gradient centralisation and
    # `reverse` act in the weight update, `dot` is read but used nowhere
    "assisted_excitation", "grad_centr", "reverse", "dot",
    # weight-update constraints of darknet's "deformable" kernels (applied to the weights after each
    # update, not in the forward pass); `angle` is their rotation
    "sway", "rotate", "stretch", "stretch_sway", "angle",
}
YOLO_PASSIVE_KEYS = ANY_LAYER_PASSIVE_KEYS | {
    # the loss: what counts as a match, how each term is weighted, label smoothing, class balance
    "ignore_thresh", "truth_thresh", "iou_thresh", "iou_thresh_kind", "iou_loss", "iou_normalizer",
    "obj_normalizer", "cls_normalizer", "delta_normalizer", "max_delta", "label_smooth_eps",
    "objectness_smooth", "focal_loss", "counters_per_class", "map", "max",
    # data augmentation during training
    "jitter", "random", "resize",
    # darknet's post-processing: NMS flavour, tracking and embeddings, console output
    "nms_kind", "beta_nms", "embedding_layer", "track_history_size", "sim_thresh", "dets_for_track",
    "dets_for_show", "track_ciou_norm", "show_details",
}
SHORTCUT_PASSIVE_KEYS = ANY_LAYER_PASSIVE_KEYS
ROUTE_PASSIVE_KEYS = ANY_LAYER_PASSIVE_KEYS | _STREAM_KEYS
UPSAMPLE_PASSIVE_KEYS = ANY_LAYER_PASSIVE_KEYS
MAXPOOL_PASSIVE_KEYS = ANY_LAYER_PASSIVE_KEYS
