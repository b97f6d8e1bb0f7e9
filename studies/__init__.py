"""The paper's studies (``studies.catalog``) and the command lines that run them."""
