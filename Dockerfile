# The Node.js image both stages start from. Official by default; where no registry image can be
# pulled, scripts/build-standin-images.sh builds one from package registries and
# deploy/compose.standin.yml passes it here (NODE_IMAGE=fleet-standin/node:26.10.0).
ARG NODE_IMAGE=node:26.10.0-trixie-slim
# Build stage: compile TypeScript with the dev toolchain.
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json tsconfig.examples.json ./
COPY src ./src
COPY examples/demo ./examples/demo
COPY scripts/bundle-sandbox-entry.mjs ./scripts/
# The product (with its sandbox entry bundled into one file), then the demo processors the compose
# config runs (bench and test tooling stay out).
RUN npx tsc -p tsconfig.build.json && node scripts/bundle-sandbox-entry.mjs && npx tsc -p tsconfig.examples.json

# Runtime stage: production dependencies only, non-root, node as PID 1 so SIGTERM reaches it.
FROM ${NODE_IMAGE}
ENV NODE_ENV=production
# bubblewrap: the OS layer of process sandboxes (namespaces). See docs/operations.md#deploy for the
# seccomp/AppArmor setting the worker container needs for unprivileged user namespaces.
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY --from=build /app/build/examples ./build/examples
COPY bin ./bin
COPY deploy ./deploy
USER node
EXPOSE 8080 9464
# HEALTH_URL: the API's /healthz (api role) or the supervisor's metrics port (worker, scheduler).
ENV HEALTH_URL=http://127.0.0.1:8080/healthz
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch(process.env.HEALTH_URL).then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "--disable-sigusr1", "bin/fleet.js"]
CMD ["start", "--role", "all"]
