"""`make demo` for sharprl (grows with the training issues)."""

from __future__ import annotations


def main() -> None:
    import jax
    import jax.numpy as jnp

    print(f"sharprl demo: JAX {jax.__version__} on {jax.devices()[0].platform}")
    print("grad of sum(x^2) at [1, 2, 3]:", jax.grad(lambda x: jnp.sum(x * x))(jnp.arange(1.0, 4.0)))


if __name__ == "__main__":
    main()
