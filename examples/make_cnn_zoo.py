"""Generate a CNN zoo on scikit-learn's digits: `python examples/make_cnn_zoo.py [--networks
1024] [--epochs 10] [--seed 0] [--out zoo/cnn_zoo.npz]`.

All networks train in one vmapped program; the file holds weights, hyperparameters and
train/test accuracies (format: `nfn.zoo.save_zoo`). Needs `pip install -e ".[zoo]"`.
"""

import argparse
import time
from pathlib import Path

import numpy as np

import nfn.zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", type=int, default=nfn.zoo.ZooConfig.num_networks)
    parser.add_argument("--epochs", type=int, default=nfn.zoo.ZooConfig.max_epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("zoo/cnn_zoo.npz"))
    args = parser.parse_args()
    try:
        config = nfn.zoo.ZooConfig(
            num_networks=args.networks, max_epochs=args.epochs, seed=args.seed
        )
    except ValueError as error:
        parser.error(str(error))
    start = time.perf_counter()
    zoo = nfn.zoo.generate_cnn_zoo(config)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    nfn.zoo.save_zoo(zoo, args.out)
    seconds = time.perf_counter() - start
    test = zoo.test_accuracy
    quartiles = ", ".join(f"{q:.3f}" for q in np.quantile(test, [0.0, 0.25, 0.5, 0.75, 1.0]))
    print(f"networks: {len(zoo)}; parameters each: {zoo.space.num_parameters}")
    print(f"test accuracy min/q1/median/q3/max: {quartiles}")
    print(f"train accuracy mean: {np.mean(zoo.train_accuracy):.3f}")
    print(f"training (one jitted program, incl. compile): {zoo.metadata['generation_seconds']} s")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) in {seconds:.1f} s")


if __name__ == "__main__":
    main()
