"""PyTorch-BigGraph config for bench/train_speed.py (PBG executes this file; paths come as -p overrides)."""
import pbg_smoothmax  # registers the "smoothmax_mixture" comparator plugin

__all__ = ["get_torchbiggraph_config", "pbg_smoothmax"]


def get_torchbiggraph_config():
    return dict(
        entity_path="", edge_paths=[""], checkpoint_path="",
        entities={"user": {"num_partitions": 1}, "item": {"num_partitions": 1}},
        relations=[{"name": "click", "lhs": "user", "rhs": "item", "operator": "none"}],
        dimension=64, comparator="cos", global_emb=False,
        num_epochs=5, batch_size=1000, num_batch_negs=50, num_uniform_negs=50, disable_lhs_negs=True,
        loss_fn="ranking", margin=0.1, lr=0.1, init_scale=0.1, workers=2, hogwild_delay=0,
        eval_fraction=0.0, verbose=0,
    )
