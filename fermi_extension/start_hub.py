"""`python -m fermi_extension.start_hub`: JupyterHub itself, started without its costliest optional
import (see ``processes.skip_optional_imports``). Arguments are JupyterHub's."""

from .processes import skip_optional_imports

if __name__ == "__main__":
    skip_optional_imports()
    from jupyterhub.app import main

    main()
