from privatai.ops.cli import main

raise SystemExit(main())
