"""``privimage data list|info|show|import``: which datasets exist, what they hold, what they look like,
and your own images brought to the public data's size and channels."""

from __future__ import annotations

import argparse
from pathlib import Path

from privimage.cli.common import data_root_option, emit, finish_command


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser(
        "data",
        help="list datasets, describe one, or draw a grid of its images",
        description="Datasets of the registry: the embedded mnist5k and glyphs1k, real datasets under the data "
        "root (cifar10, celeba32/64, mnist, fashionmnist, imagenet32/64, imagenet32/64-folder), and your own "
        "images as folder:PATH or npz:PATH (relative to the data root).",
    )
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    commands.required = True

    listing = commands.add_parser("list", help="every dataset, whether it is available here, and where it is expected")
    finish_command(listing, _list, profile=False)

    info = commands.add_parser("info", help="size, shape and class names of one split (works without the files)")
    _add_dataset_arguments(info)
    finish_command(info, _info)

    show = commands.add_parser("show", help="write a PNG grid of images labelled with their class names")
    _add_dataset_arguments(show)
    show.add_argument("--n", type=int, default=64, help="number of images (default: 64)")
    show.add_argument("--match", default=None, help="only classes whose name contains this text, e.g. digit")
    show.add_argument("--seed", type=int, default=0, help="which images are drawn (display only)")
    show.add_argument("--out", type=Path, required=True, help="the PNG file to write")
    show.add_argument("--allow-sensitive", action="store_true",
                      help="draw the profile's sensitive training split too (a picture of it leaves no ledger)")
    finish_command(show, _show)

    importing = commands.add_parser(
        "import",
        help="copy your own images, brought to the public data's size and channels, into a new dataset",
        description="Write a copy of SOURCE (folder:PATH or npz:PATH, any size, grayscale or RGB) as DEST "
        "(folder:PATH writes PNG files, npz:PATH writes <split>.npz), every split, each image converted on its "
        "own. By default to the image shape of the profile's public dataset (1 x 32 x 32 for glyphs1k). SOURCE "
        "is never changed; DEST must not exist.",
    )
    importing.add_argument("source", help="folder:PATH or npz:PATH, relative to the data root")
    importing.add_argument("destination", help="folder:PATH or npz:PATH to create, relative to the data root")
    importing.add_argument("--size", type=int, default=None,
                           help="side length of the square images written (default: the public dataset's)")
    importing.add_argument("--channels", type=int, choices=(1, 3), default=None,
                           help="1 grayscale or 3 RGB (default: the public dataset's)")
    importing.add_argument("--fit", choices=("resize", "center_crop", "pad"), default="resize",
                           help="resize: the whole image (default); center_crop: the central square, then resize; "
                           "pad: centre on black, never shrink (28x28 MNIST-like digits to 32x32)")
    finish_command(importing, _import)


def _add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="a dataset name (see 'privimage data list'), folder:PATH or npz:PATH")
    parser.add_argument("--split", default="train", help="split (default: train)")
    parser.add_argument("--download", action="store_true", help="download a missing real dataset (needs a network)")


def _data_config(args: argparse.Namespace):
    from privimage.config import load_config

    return load_config(args.profile).data


def _list(args: argparse.Namespace) -> int:
    from privimage.data import list_datasets

    data_root = data_root_option(args)
    rows = list_datasets(data_root)
    lines = [f"data root: {data_root}"]
    for row in rows:
        status = "available" if row["available"] else (
            "partial: " + ", ".join(row["available_splits"]) if row["available_splits"] else "missing")
        lines.append(f"{row['name']:<18} {status:<18} {row['expected_path']}")
    lines.append("own data: folder:PATH (PATH/<split>/<class>/<image>) or npz:PATH (PATH/<split>.npz), "
                 "relative to the data root")
    emit({"data_root": str(data_root), "datasets": rows}, args.json, human="\n".join(lines))
    return 0


def _info(args: argparse.Namespace) -> int:
    from privimage.data import dataset_info, load_dataset

    data_root = data_root_option(args)
    config = _data_config(args)
    if args.download:
        load_dataset(args.name, args.split, data_root=data_root, config=config, download=True)
    info = dataset_info(args.name, args.split, data_root=data_root, config=config)
    names = info["class_names"]
    shown = "(from the files)" if names is None else ", ".join(names[:12]) + (
        f", ... ({len(names) - 12} more)" if len(names) > 12 else "")
    human = "\n".join([
        f"{info['name']} / {info['split']}: {info['description']}",
        f"  images:    {info['num_images']:,} ({info['source']})",
        f"  shape:     {' x '.join(str(s) for s in info['image_shape'])} (C x H x W)",
        f"  classes:   {info['num_classes']}: {shown}",
        f"  splits:    {', '.join(info['splits'])}",
        f"  available: {'yes' if info['available'] else 'no'} ({info['expected_path']})",
    ])
    emit(info, args.json, human=human)
    return 0


def _show(args: argparse.Namespace) -> int:
    from privimage.data import load_dataset
    from privimage.data.preview import save_labelled_grid
    from privimage.data.registry import is_sensitive_name
    from privimage.errors import ConfigError

    config = _data_config(args)
    # Nothing reads the sensitive training split outside an accounted mechanism unless asked to.
    if args.split == "train" and is_sensitive_name(args.name, config) and not args.allow_sensitive:
        raise ConfigError(f"{args.name}/train is the profile's sensitive training split; show --split test, "
                          "or pass --allow-sensitive to look at it")
    dataset = load_dataset(args.name, args.split, data_root=data_root_option(args), config=config,
                           download=args.download)
    shown = save_labelled_grid(dataset=dataset, path=args.out, n=args.n, seed=args.seed, match=args.match)
    emit({"name": dataset.name, "split": dataset.split, "out": str(args.out), "num_shown": shown},
         args.json, human=f"wrote {args.out}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from privimage.data import dataset_info
    from privimage.data.own import import_images

    data_root = data_root_option(args)
    channels, size = args.channels, args.size
    if channels is None or size is None:
        # The public data's geometry, from the registry: the sensitive set must match it to be pre-trained for.
        config = _data_config(args)
        shape = dataset_info(config.public, "train", data_root=data_root, config=config)["image_shape"]
        channels = shape[0] if channels is None else channels
        size = shape[-1] if size is None else size
    result = import_images(source=args.source, destination=args.destination, data_root=data_root,
                           channels=channels, side=size, fit=args.fit)
    counts = ", ".join(f"{split} {count:,}" for split, count in result["splits"].items())
    emit(result, args.json, human=f"wrote {args.destination} ({counts} images, "
                                  f"{' x '.join(str(s) for s in result['image_shape'])}) to {result['path']}")
    return 0
