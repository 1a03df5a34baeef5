"""`python -m proj {fit,validate,test,predict} [flags]`: the full LightningCLI."""

from proj.cli import main

if __name__ == "__main__":
    main()
