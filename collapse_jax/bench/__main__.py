from collapse_jax.bench import main

main()
