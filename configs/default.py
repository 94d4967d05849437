"""Defaults shared by every config: the PVT/DeiT ImageNet recipe for HAT-Net.

Variant configs (hatnet_tiny.py ...) start from `get_config()` here and change only what differs.
Every field is overridable from the command line (`--config.batch_size=512`); unknown keys are rejected.
Durations are given in epochs (`*_epochs`) or steps (`*_steps`); `hatnet_jax.training.schedule.to_steps` turns
either into steps, and a `*_steps` field that is set wins (so `--config.num_steps=100` alone switches).
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mode = 'train'  # 'train' (train + periodic eval) or 'eval' (restore a checkpoint, evaluate once).
  c.task = 'classification'  # hatnet_jax.tasks: owns the model construction, loss, metrics and data

  # ---- Model: handed to hatnet_jax.models.create(**config.model, num_classes=<from the dataset>) ----
  # Any field of the variant's table row (dims, depths, head_dim, ...) may be added here as well, e.g. for
  # the small demo models; models.create holds the defaults of everything not set.
  c.model = ml_collections.ConfigDict()
  c.model.name = 'hatnet_tiny'
  c.model.drop_path_rate = 0.1
  c.model.drop_rate = 0.0  # dropout inside blocks (official default 0)
  c.model.head_drop_rate = 0.2  # dropout before the classifier (official: 0.2)
  c.model.dtype = 'float32'  # compute dtype: 'float32' or 'bfloat16' (norms, softmax, logits stay float32)
  c.model.param_dtype = 'float32'
  c.model.remat = False  # rematerialise each block in the backward pass (saves memory at large batch)
  # Stages of at most this many blocks are unrolled (0: none; --config.model.unroll=27 unrolls every stage
  # of every variant; a config file may also say True/False): faster steps (no stacked per-block
  # activations; tiny's CPU train step 2.9 -> 3.5 img/s) for longer compiles and more memory.
  # 6 unrolls all of tiny and stages 1, 2, 4 of small/medium and 1, 4 of large. Scanning small's 8-block
  # stage 3 and large's 8-block stage 2 cost no step time on this CPU and shortened their train-step
  # compiles: small 48.4 -> 33.5-34.4 s (step 7.1 vs 7.3 s), large 48.7 -> 37.0 s (step 19.9 s both);
  # the 18/27-block stage 3 of medium/large stays one loop (BENCHMARKS.md).
  c.model.unroll = 6
  # '': the native CPU kernels on one CPU device in float32, else JAX chooses; 'native', 'xla' or 'cudnn'
  # (flash attention on GPU) forces one.
  c.model.attention_impl = ''
  # 'auto': on one CPU device in float32, the native CPU kernels of the inverted residual's
  # SiLU -> depthwise -> SiLU and of GroupNorm (hatnet_jax/models/*.cc); XLA's paths elsewhere, or with
  # depthwise_impl 'shift'/'conv' and norm_impl 'xla'.
  c.model.depthwise_impl = 'auto'
  c.model.norm_impl = 'auto'

  # ---- Mixup/CutMix + label smoothing, in the train step: hatnet_jax.data.classification.mixup.mix_batch(**config.mixup) ----
  c.mixup = ml_collections.ConfigDict()
  c.mixup.mixup_alpha = 0.8
  c.mixup.cutmix_alpha = 1.0
  c.mixup.mixup_prob = 1.0  # probability of applying mixup or cutmix to a batch
  c.mixup.switch_prob = 0.5  # probability of cutmix instead of mixup
  c.mixup.label_smoothing = 0.1

  # ---- Data (hatnet_jax.data) ----
  c.data = ml_collections.ConfigDict()
  # 'imagenet2012', 'digits' (scikit-learn digits, built in), 'image_folder' (manual_dir/<split>/<class>/
  # *.jpg) or any TFDS image classification name ('cifar10', 'imagenette/320px', ...).
  c.data.dataset = 'imagenet2012'
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS data dir (None: TFDS default)
  c.data.manual_dir = ml_collections.FieldReference(None, field_type=str)  # ImageNet tars / ImageFolder root
  c.data.train_split = 'train'
  c.data.eval_split = 'validation'  # datasets without 'validation' (cifar10, digits) fall back to 'test'
  c.data.eval_batch_size = 0  # global; 0: batch_size
  c.data.image_size = 224
  c.data.eval_crop_ratio = 0.875  # eval: resize shorter side to image_size / ratio, center crop
  c.data.interpolation = 'bicubic'  # resizes and RandAugment's geometric ops
  c.data.antialias = True  # PIL-like antialiased resizes (False: aliasing)
  # RandomResizedCrop windows up to this side travel unresized (zero-padded to a C x C uint8 canvas) and
  # are resized on the device (hatnet_jax/data/classification/crop_resize.py): the host only reads and decodes. Larger
  # windows are resized on the host. 512 holds ImageNet's typical 500x375 photos; datasets of one fixed
  # image size (cifar10, digits) use a canvas of that size. 0: resize on the host.
  c.data.device_resize = 512
  c.data.mean = (0.485, 0.456, 0.406)  # ImageNet mean/std on [0, 1] pixels
  c.data.std = (0.229, 0.224, 0.225)
  c.data.crop_scale = (0.08, 1.0)  # RandomResizedCrop
  c.data.crop_ratio = (3 / 4, 4 / 3)
  c.data.hflip_prob = 0.5
  c.data.randaugment = 'rand-m9-mstd0.5-inc1'  # timm spec string; '' disables
  c.data.erase_prob = 0.25  # random erasing, after normalisation
  c.data.erase_mode = 'pixel'
  c.data.erase_count = 1
  c.data.repeated_aug = 1  # 3 = DeiT repeated augmentation
  c.data.prefetch = 2  # batches prefetched onto the devices
  c.data.threads = 0  # tf.data threads per process (0: one per host CPU core)
  c.data.cache = False  # keep the encoded images in host memory (small datasets, e.g. digits)
  c.data.skip_corrupt = True  # replace (and count) undecodable training images; False: stop at the first
  c.data.allow_empty_classes = False  # image_folder: an empty class directory is an error unless True

  # ---- Optimisation (hatnet_jax.training.train) ----
  c.batch_size = 1024  # global, over all devices of all processes
  c.base_lr = 5e-4  # scaled by batch_size / lr_base_batch
  c.lr_base_batch = 512
  c.min_lr = 1e-5
  c.warmup_lr = 1e-6
  c.num_epochs = ml_collections.FieldReference(300, field_type=int)
  c.num_steps = ml_collections.FieldReference(None, field_type=int)
  c.warmup_epochs = ml_collections.FieldReference(5, field_type=int)
  c.warmup_steps = ml_collections.FieldReference(None, field_type=int)
  c.b1 = 0.9
  c.b2 = 0.999
  c.eps = 1e-8
  c.weight_decay = 0.05
  c.weight_decay_on = 'kernels'  # 'kernels' (none on biases and norm parameters) or 'all'
  c.lr_schedule = 'cosine'  # after the warmup: 'cosine' to min_lr, or 'poly' (power lr_power) to min_lr
  c.lr_power = 0.9
  c.grad_clip_norm = 0.0  # 0 disables
  c.grad_accum_steps = 1
  c.ema_decay = 0.0  # 0 disables the EMA of the weights
  c.shard_params = False  # FSDP-style: shard params and optimizer state over the 'data' axis
  c.shard_params_min_size = 2**14  # with shard_params: smaller arrays stay replicated

  # ---- Bookkeeping ----
  c.log_every_steps = 100
  c.eval_every_epochs = ml_collections.FieldReference(1, field_type=int)
  c.eval_every_steps = ml_collections.FieldReference(None, field_type=int)
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.keep_best_checkpoint = True
  c.init_from = ''  # a checkpoint dir (e.g. written by hatnet_jax.tools.convert) to start from
  # JAX's persistent compilation cache (hatnet_jax.training.compile_cache): a restart, a sweep point or an eval run
  # loads the compiled steps instead of compiling them again. '~' is expanded at run time; '' (or None)
  # disables it; the environment variable JAX_COMPILATION_CACHE_DIR, when set, wins over this field.
  c.compilation_cache_dir = ml_collections.FieldReference('~/.cache/hatnet_jax/xla', field_type=str)
  # CPU backend: main.py restarts itself once with glibc's huge-page tunable (hatnet_jax.training.host_memory), so the
  # multi-GB temporaries XLA allocates at every step are faulted in 2 MiB at a time, not 4 KiB (tiny's CPU
  # train step ~1.7x faster, same peak memory). Ignored where it cannot help (an accelerator backend, no
  # transparent huge pages in 'madvise' mode, glibc < 2.35).
  c.cpu_huge_pages = True
  # XLA compiler options of the train and eval steps on the CPU backend (ignored on GPU/TPU; a value of ''
  # drops an option; more may be added, e.g. xla_cpu_opt_preset): the memory-optimised scheduler halves the
  # step's peak memory and is no slower (hatnet_jax.training.xla_options; BENCHMARKS.md).
  c.cpu_compiler_options = ml_collections.ConfigDict(dict(
      xla_cpu_scheduler_type='CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'))
  c.profile_start_step = -1  # >= 0: write a profiler trace of profile_num_steps steps from this step
  c.profile_num_steps = 5
  c.log_images_every_steps = 0  # > 0: write a sample of augmented training images (also at the first step)
  c.log_images_count = 8
  # > 0: at each evaluation, write the local and global attention (stage 1, block 0) of a few query points
  # of this many eval images to TensorBoard (hatnet_jax.tools.attention_maps).
  c.log_attention_maps = 0
  return c
