# The lockstep image: the Concourse resource type (/opt/resource/check, in, out) and the
# image the tasks in tasks/ run (the lockstep CLI and a POSIX shell for task scripts).
#
# It is assembled from binaries that ci/image builds (static, musl), so it needs no
# toolchain image and no registry:
#
#   ci/image                  # build the binaries, then this Dockerfile, tag localhost/lockstep:dev
#
# Layout of the build context ci/image prepares:
#   bin/{lockstep,check,in,out}   static binaries
#   busybox                       a static busybox (sh, tar, sha256sum, ... for task scripts)
#   ca-certificates.crt           the CA bundle for HTTPS to S3 and the BOSH director
#   tasks/                        the task scripts, also usable from the image itself
FROM scratch

COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]

COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY bin/lockstep /usr/local/bin/lockstep
COPY bin/check bin/in bin/out /opt/resource/
COPY tasks/ /opt/lockstep/tasks/

# Concourse runs tasks as root in a fresh container; /tmp must exist and be writable.
RUN mkdir -p /tmp /root && chmod 1777 /tmp

ENV PATH=/usr/local/bin:/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    HOME=/root

LABEL org.opencontainers.image.title="lockstep" \
      org.opencontainers.image.description="Consistent, BBR-compatible backups of BOSH deployments: Concourse resource type and task image"

CMD ["/usr/local/bin/lockstep", "--help"]
