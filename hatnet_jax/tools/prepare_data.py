"""Prepares a dataset once, in the random-access array_record format the pipeline reads.

    python -m hatnet_jax.tools.prepare_data --dataset=imagenet2012 --manual_dir=/data/imagenet_tars \
        [--data_dir=/data/tfds]

ImageNet: the manual dir must hold ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar as downloaded
from image-net.org (TFDS ships the validation labels). Other TFDS datasets are downloaded by TFDS;
'digits' needs nothing. 'image_folder' needs no preparation (files are read in place).

Segmentation: --dataset=ade20k --manual_dir=<ADEChallengeData2016 dir, or the dir holding
ADEChallengeData2016.zip>; --dataset=digit_scenes (or digit_scenes/small) needs nothing; seg_folder is
read in place.

Detection: --dataset=coco --manual_dir=<dir with train2017/, val2017/, annotations/ (or the official zips
train2017.zip, val2017.zip, annotations_trainval2017.zip)>; --dataset=digit_boxes (or digit_boxes/small)
needs nothing.
"""
import argparse
import logging
import sys

import ml_collections


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--dataset', required=True)
  parser.add_argument('--manual_dir', default=None)
  parser.add_argument('--data_dir', default=None)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO)
  from hatnet_jax.data import sources  # pylint: disable=g-import-not-at-top
  from hatnet_jax.data.classification import sources as cls_sources  # pylint: disable=g-import-not-at-top
  d = ml_collections.ConfigDict(dict(dataset=args.dataset, manual_dir=args.manual_dir,
                                     data_dir=args.data_dir))
  if args.dataset.split('/')[0] in ('ade20k', 'digit_scenes', 'seg_folder'):
    return _prepare_segmentation(args)
  if args.dataset.split('/')[0] in ('coco', 'digit_boxes'):
    return _prepare_detection(args)
  if args.dataset == cls_sources.IMAGE_FOLDER:
    print('image_folder needs no preparation: files are read in place.')
    return 0
  builder = cls_sources.get_builder(d)
  if builder.name.startswith('imagenet2012'):
    try:
      cls_sources.check_imagenet_files(d, builder)
    except FileNotFoundError as e:
      print(e, file=sys.stderr)
      return 1
  if builder.is_prepared():
    print(f'{builder.name} is already prepared in {builder.data_dir}')
  else:
    sources.prepare_builder(builder, manual_dir=args.manual_dir)
    print(f'Prepared {builder.name} in {builder.data_dir}')
  for split, info in builder.info.splits.items():
    print(f'  {split}: {info.num_examples} examples')
  return 0


def _prepare_segmentation(args):
  """Segmentation datasets (`seg_sources`): 'ade20k' from its manual dir, 'digit_scenes[/small]'."""
  from hatnet_jax.data.segmentation import sources as seg_sources  # pylint: disable=g-import-not-at-top
  d = ml_collections.ConfigDict(dict(dataset=args.dataset, manual_dir=args.manual_dir,
                                     data_dir=args.data_dir, train_split='train',
                                     eval_split='validation'))
  if args.dataset == seg_sources.SEG_FOLDER:
    print('seg_folder needs no preparation: files are read in place.')
    return 0
  try:
    info = seg_sources.dataset_info(d)  # prepares it if needed
  except FileNotFoundError as e:
    print(e, file=sys.stderr)
    return 1
  print(f'{info.name} is prepared: {info.train_split} {info.num_train} examples, {info.eval_split} '
        f'{info.num_eval} examples, {info.num_classes} classes')
  return 0


def _prepare_detection(args):
  """Detection datasets (`det_sources`): 'coco' from its manual dir, 'digit_boxes[/small]'."""
  from hatnet_jax.data.detection import sources as det_sources  # pylint: disable=g-import-not-at-top
  d = ml_collections.ConfigDict(dict(dataset=args.dataset, manual_dir=args.manual_dir,
                                     data_dir=args.data_dir, train_split='train', eval_split='validation',
                                     filter_empty_gt=True, min_size=32))
  try:
    info = det_sources.dataset_info(d)  # prepares it if needed
  except (FileNotFoundError, ValueError) as e:
    print(e, file=sys.stderr)
    return 1
  print(f'{info.name} is prepared: {info.train_split} {info.num_train} images trained on (mmdet filter), '
        f'{info.eval_split} {info.num_eval} images, {info.num_classes} classes')
  return 0


if __name__ == '__main__':
  sys.exit(main())
