"""The command-line tools, one module each; `pyproject.toml` installs each as a console command.

    resnest-train             train.py            train from a YAML config (cli/train.py)
    resnest-sweep             scripts/sweep.py    run a sweep of configs (cli/sweep.py)
    resnest-prepare-imagenet  scripts/prepare_imagenet.py  sort val/, check a dataset
    resnest-benchmark         scripts/benchmark.py  models / data / gpu benchmarks (cli/bench_*.py)
    resnest-make-demo-data    scripts/make_demo_data.py  the quick-start data set (data/demo.py)
    resnest-models            python -m resnest_train.models  the model table (models/__main__.py)

The files under scripts/ and train.py are thin wrappers for a checkout; every `main(argv=None)`
here returns the process exit status.
"""
