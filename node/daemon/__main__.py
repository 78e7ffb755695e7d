from node.daemon.main import main

main()
