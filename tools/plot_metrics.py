"""Turn a run's metrics.jsonl into PNG curves.

    python tools/plot_metrics.py runs/toy_oppo/metrics.jsonl --keys reward_total reward_ew --out rewards.png
"""
import argparse

from megatron_omni.training.plots import plot_metrics


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", help="a metrics.jsonl written by a training run")
    parser.add_argument("--keys", nargs="+", required=True, help="metric names, one panel each")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--title")
    args = parser.parse_args(argv)
    print(plot_metrics(args.metrics, args.keys, args.out, args.title))


if __name__ == "__main__":
    main()
