# The project image (Dockerfile) plus what an MPIJob needs: the `mpi` extra (mpi4py and the MPICH
# wheel, as pyproject.toml pins them) and OpenSSH. The MPI Operator mounts ssh keys into the user's
# home and runs sshd there as that user on port 2222; MPICH's mpiexec in the launcher pod starts
# the ranks over ssh. The account gets the image's uid 1000, so files on the shared volumes are the
# scheduled job's.
#   docker build -t mnist-pipeline:0.1.0 .
#   docker build -t mnist-pipeline-mpi:0.1.0 -f deploy/kubernetes/mpi.Dockerfile .
ARG BASE=mnist-pipeline:0.1.0
FROM ${BASE}
USER root
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssh-server openssh-client \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir "mpi4py>=4.1,<5" "mpich>=4.2,<6"
RUN useradd --uid 1000 --create-home --home-dir /home/mpiuser --shell /bin/bash mpiuser \
    && printf 'StrictHostKeyChecking no\nUserKnownHostsFile /dev/null\nPort 2222\n' >> /etc/ssh/ssh_config \
    && printf 'Port 2222\nPidFile /home/mpiuser/sshd.pid\nHostKey /home/mpiuser/.ssh/id_rsa\nStrictModes no\n' \
        > /home/mpiuser/.sshd_config \
    && chown mpiuser:mpiuser /home/mpiuser/.sshd_config
USER 1000:1000
WORKDIR /home/mpiuser
