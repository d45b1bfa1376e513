// Wrapper module that builds krew and validate-krew-manifest for the install test from the official module.
module kubedev.local/tests/cluster/krew

go 1.25.0

require sigs.k8s.io/krew v0.4.3 // indirect
