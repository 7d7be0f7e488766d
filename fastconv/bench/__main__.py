from fastconv.bench.cli import main

main()
