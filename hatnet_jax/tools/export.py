"""Exports HAT-Net with its weights as a serialized `jax.export` module (StableHLO), batch size symbolic:

  python -m hatnet_jax.tools.export --model=hatnet_tiny --weights=DIR --output=FILE [--image_size=224]

FILE holds `jax.export.export(jax.jit(fn))(ShapeDtypeStruct((b, S, S, 3), float32)).serialize()` with `b`
symbolic: fn maps normalised NHWC images (x / 255 - mean) / std to float32 logits (b, num_classes), the
weights baked in. FILE.json describes the input (size, layout NHWC, mean/std, resize) and the classes.
Loading needs only jax (no flax, no hatnet_jax):

    import jax, numpy as np
    exported = jax.export.deserialize(open(FILE, 'rb').read())
    logits = exported.call(np.zeros((7, 224, 224, 3), np.float32))
"""
import argparse
import json
import os
import sys

from hatnet_jax.tools import inference
from hatnet_jax.tools.inference import UserError


def export_model(model, variables, image_size: int, platforms=None):
  """The `jax.export.Exported` of images (b, S, S, 3) float32 -> logits (b, classes), b symbolic."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  # XLA's own paths: the native CPU kernels are custom calls that a loaded module could not find.
  from hatnet_jax import models  # pylint: disable=g-import-not-at-top
  model = model.clone(**models.xla_paths(model.depthwise_impl, model.attention_impl, model.norm_impl))

  def fn(images):
    return model.apply(variables, images, train=False)

  (b,) = jax.export.symbolic_shape('b')
  spec = jax.ShapeDtypeStruct((b, image_size, image_size, 3), jnp.float32)
  kwargs = {'platforms': tuple(platforms)} if platforms else {}
  return jax.export.export(jax.jit(fn), **kwargs)(spec)


def metadata(settings, names, names_source, platforms) -> dict:
  return {
    'format': 'jax.export serialized module (jax.export.deserialize(bytes).call(images))',
    'model': settings.model,
    'model_overrides': settings.model_overrides,
    'num_classes': settings.num_classes,
    'input_shape': ['b', settings.image_size, settings.image_size, 3],
    'input_dtype': 'float32',
    'layout': 'NHWC',
    'image_size': settings.image_size,
    'input_scale': '(pixel / 255 - mean) / std, RGB',
    'mean': list(settings.mean),
    'std': list(settings.std),
    'resize': (f'shorter side to {inference.eval_resize_to(settings)} ({settings.interpolation}, '
                   f'antialias={settings.antialias}), center crop {settings.image_size}'),
    'output': 'logits float32 [b, num_classes] (softmax for probabilities)',
    'platforms': list(platforms),
    'class_names': names,
    'class_names_source': names_source,
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m hatnet_jax.tools.export', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
  from hatnet_jax.tools import predict  # pylint: disable=g-import-not-at-top
  predict.add_model_flags(parser, image_size_help='input size S (default: the training run\'s, else 224)')
  parser.add_argument('--output', required=True, help='file for the serialized module (FILE.json beside it)')
  parser.add_argument('--class_names', default=None, help='file of class names for FILE.json')
  parser.add_argument('--platforms', default='', help='comma-separated, e.g. cpu,cuda,tpu (default: the '
            'platform of this machine)')
  args = parser.parse_args(argv)
  inference.quiet_tensorflow()
  try:
    import jax  # pylint: disable=g-import-not-at-top
    settings, model, variables, weights_path, workdir = predict.load(args)
    names, names_source = inference.class_names(settings, names_file=args.class_names,
                          weights_path=weights_path, workdir=workdir)
    platforms = [p for p in args.platforms.split(',') if p] or [jax.default_backend()]
    try:
      exported = export_model(model, variables, settings.image_size, platforms)
    except ValueError as e:
      raise UserError(f'--platforms {args.platforms}: {e}') from e
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  data = exported.serialize()
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, 'wb') as f:
    f.write(data)
  with open(args.output + '.json', 'w', encoding='utf-8') as f:
    json.dump(metadata(settings, names, names_source, platforms), f, indent=1)
  print(f'wrote {args.output} ({len(data) / 2**20:.1f} MiB, {settings.model}, {settings.num_classes} classes, '
          f'input (b, {settings.image_size}, {settings.image_size}, 3) float32 NHWC, platforms {platforms}) and '
          f'{args.output}.json')
  return 0


if __name__ == '__main__':
  sys.exit(main())
