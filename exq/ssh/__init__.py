"""SSH: connections with verified host keys, and copying a workdir over SFTP."""
