# Per-cluster PKI: one CA, server and client certificates, kubeconfigs, and the
# service-account signing key. Generated once per cluster state directory.

# new_key FILE: an ECDSA P-256 private key.
new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# issue_cert NAME SUBJECT EXTENDED_USAGE [SUBJECT_ALT_NAMES]: a certificate signed by the CA.
issue_cert() {
    local name=$1 subject=$2 usage=$3 sans=${4:-}
    new_key "$PKI_DIR/$name.key"
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$usage"
        [ -n "$sans" ] && echo "subjectAltName=$sans"
    } > "$PKI_DIR/$name.ext"
    openssl req -new -key "$PKI_DIR/$name.key" -subj "$subject" -out "$PKI_DIR/$name.csr"
    openssl x509 -req -in "$PKI_DIR/$name.csr" -CA "$PKI_DIR/ca.crt" -CAkey "$PKI_DIR/ca.key" \
        -CAcreateserial -days 365 -extfile "$PKI_DIR/$name.ext" -out "$PKI_DIR/$name.crt" 2>/dev/null
    rm -f "$PKI_DIR/$name.csr" "$PKI_DIR/$name.ext"
}

# write_kubeconfig FILE CERT_NAME [NAMESPACE]: a kubeconfig that authenticates with a client cert.
write_kubeconfig() {
    local file=$1 cert=$2 namespace=${3:-default}
    cat > "$file" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: kubedev-test
  cluster:
    server: https://$NODE_IP:$API_PORT
    certificate-authority-data: $(base64 -w0 < "$PKI_DIR/ca.crt")
users:
- name: $cert
  user:
    client-certificate-data: $(base64 -w0 < "$PKI_DIR/$cert.crt")
    client-key-data: $(base64 -w0 < "$PKI_DIR/$cert.key")
contexts:
- name: kubedev-test
  context: {cluster: kubedev-test, user: $cert, namespace: $namespace}
current-context: kubedev-test
KUBECONFIG
    chmod 600 "$file"
}

make_pki() {
    [ -f "$PKI_DIR/.complete" ] && return 0
    log "generating certificates"
    rm -rf "$PKI_DIR" && mkdir -p "$PKI_DIR" && chmod 700 "$PKI_DIR"
    new_key "$PKI_DIR/ca.key"
    openssl req -x509 -new -key "$PKI_DIR/ca.key" -subj "/CN=kubedev-test-ca" -days 3650 \
        -out "$PKI_DIR/ca.crt"
    local api_sans="DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
    api_sans+=",DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,DNS:localhost"
    api_sans+=",IP:$NODE_IP,IP:$API_SERVICE_IP,IP:127.0.0.1"
    issue_cert apiserver "/CN=kube-apiserver" serverAuth "$api_sans"
    issue_cert apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client/O=system:masters" clientAuth
    issue_cert kubelet "/CN=$NODE_NAME" serverAuth "DNS:$NODE_NAME,IP:$NODE_IP"
    issue_cert node "/CN=system:node:$NODE_NAME/O=system:nodes" clientAuth
    issue_cert admin "/CN=kubedev-admin/O=system:masters" clientAuth
    issue_cert controller-manager "/CN=system:kube-controller-manager" clientAuth
    issue_cert scheduler "/CN=system:kube-scheduler" clientAuth
    issue_cert kube-proxy "/CN=system:kube-proxy" clientAuth
    # A developer with rights in $DEV_NAMESPACE only (manifests/dev-user.yaml).
    issue_cert developer "/CN=kubedev-developer/O=kubedev-developers" clientAuth
    new_key "$PKI_DIR/service-account.key"
    openssl pkey -in "$PKI_DIR/service-account.key" -pubout -out "$PKI_DIR/service-account.pub"

    write_kubeconfig "$ADMIN_KUBECONFIG" admin
    write_kubeconfig "$DEV_KUBECONFIG" developer "$DEV_NAMESPACE"
    local component
    for component in node controller-manager scheduler kube-proxy; do
        write_kubeconfig "$PKI_DIR/$component.kubeconfig" "$component"
    done
    touch "$PKI_DIR/.complete"
}
