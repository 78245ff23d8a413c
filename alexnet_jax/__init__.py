"""AlexNet (Krizhevsky, Sutskever and Hinton, NIPS 2012) in JAX/Flax, trained data-parallel."""
