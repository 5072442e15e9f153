"""Networks of Mo-Diff: the frame VAE, the temporal differential diffusion model (TDDM), the
field-guided image-to-video denoiser (I2V), their building blocks and schedulers, the model
configuration and the checkpoint format."""
