"""mdir: image-to-image translation GANs on Ray, tracked in MLflow."""

__version__ = "0.1.0"
