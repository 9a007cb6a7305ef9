from srcompress.cli import main

main()
